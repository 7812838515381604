<#
.SYNOPSIS
    Install Avatar Cam on Windows.

.DESCRIPTION
    Run from the repository, in PowerShell (no administrator rights needed):

        powershell -ExecutionPolicy Bypass -File install_scripts\install-windows.ps1 [-Autostart]

    What it does, saying each change before making it, and nothing that is already in place:
      1. finds Python 3.10 or newer (the py launcher, or python on PATH)
      2. checks the virtual camera (the OBS Virtual Camera, installed with OBS Studio; or Unity Capture) and
         the optional virtual microphone (VB-CABLE). It never installs those itself: it says what to do.
      3. a virtual environment (default %LOCALAPPDATA%\avatar-cam\venv) with this repository's package in it
      4. %LOCALAPPDATA%\avatar-cam\bin\avatar-cam.cmd, that folder on your user PATH, and a Start menu shortcut
      5. with -Autostart, "Avatar Cam.lnk" in your Startup folder: the same shortcut the tray menu's
         "Start at login" makes
      6. runs `avatar-cam doctor`
    Run it again at any time: it changes only what differs.

.PARAMETER Autostart
    Also start Avatar Cam at login.
.PARAMETER Venv
    The virtual environment folder.
.PARAMETER Python
    The Python (3.10 or newer) that creates the venv.
.PARAMETER Reinstall
    Reinstall the package even if this source is already installed.
.PARAMETER DryRun
    Say what would change, change nothing.
.PARAMETER NoDoctor
    Do not run `avatar-cam doctor` at the end.
#>
[CmdletBinding()]
param(
    [switch]$Autostart,
    [string]$Venv = (Join-Path $env:LOCALAPPDATA 'avatar-cam\venv'),
    [string]$Python = '',
    [switch]$Reinstall,
    [switch]$DryRun,
    [switch]$NoDoctor
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 2.0

$Repo = (Resolve-Path (Join-Path $PSScriptRoot '..')).Path
$BinDir = Join-Path $env:LOCALAPPDATA 'avatar-cam\bin'
$VenvPython = Join-Path $Venv 'Scripts\python.exe'
$VenvPythonW = Join-Path $Venv 'Scripts\pythonw.exe'
$Exe = Join-Path $Venv 'Scripts\avatar-cam.exe'
$Marker = Join-Path $Venv '.avatar-cam-install'
$Programs = Join-Path $env:APPDATA 'Microsoft\Windows\Start Menu\Programs'
$MenuShortcut = Join-Path $Programs 'Avatar Cam.lnk'
$StartupShortcut = Join-Path $Programs 'Startup\Avatar Cam.lnk'
$ObsClsid = '{A3FCE0F5-3493-419F-958A-ABA1250EC20B}'      # OBS Virtual Camera (DirectShow filter)
$UnityClsid = '{5C2CD55C-92AD-4999-8666-912BD3E70010}'    # Unity Capture

function Step([string]$Text) { Write-Host ''; Write-Host "==> $Text" }
function Change([string]$Text) { Write-Host "  change: $Text" }
function Already([string]$Text) { Write-Host "  already: $Text" }
function Note([string]$Text) { Write-Host "  note: $Text" }
function Warn([string]$Text) { Write-Host "  WARNING: $Text" -ForegroundColor Yellow }
function Fail([string]$Text) { Write-Host "install-windows.ps1: $Text" -ForegroundColor Red; exit 1 }

# Run a native program, its output to the console; returns its exit code. In -DryRun, only says it.
# (Out-Host: whatever a function does not capture becomes part of its return value.)
# Windows PowerShell 5.1 drops the double quotes inside native arguments: no argument here contains one.
# 'Continue': pip's warnings on stderr must not stop the script (see Get-NativeOutput).
function Invoke-Change([string]$Exe, [string[]]$Arguments) {
    if ($DryRun) { Write-Host "  would run: $Exe $($Arguments -join ' ')"; return 0 }
    $ErrorActionPreference = 'Continue'
    & $Exe @Arguments | Out-Host
    return $LASTEXITCODE
}

# Run a native program quietly: its output lines, or $null if it is missing or failed. Windows PowerShell
# 5.1 turns redirected stderr into errors, which 'Stop' would make fatal: hence 'Continue' in here.
function Get-NativeOutput([string]$Exe, [string[]]$Arguments) {
    $ErrorActionPreference = 'Continue'
    try { $out = & $Exe @Arguments 2>$null } catch { return $null }
    if ($LASTEXITCODE -ne 0) { return $null }
    if ($null -eq $out) { return '' }
    return $out
}

function Test-Native([string]$Exe, [string[]]$Arguments) {
    return $null -ne (Get-NativeOutput $Exe $Arguments)
}

function Test-GoodPython([string]$Candidate) {
    return Test-Native $Candidate @('-c', 'import sys; sys.exit(sys.version_info < (3, 10))')
}

Write-Host "Avatar Cam installer for Windows ($Repo)"
if ($DryRun) { Write-Host 'Dry run: nothing will be changed.' }

# --- 1. Python --------------------------------------------------------------------------------------------

if (-not $Python) {
    # The py launcher knows every installed Python; 'python' may be the Microsoft Store's placeholder.
    $found = Get-NativeOutput 'py' @('-3', '-c', 'import sys; print(sys.executable)')
    if ($found) { $Python = ($found | Select-Object -First 1).Trim() }
    elseif (Get-Command python -ErrorAction SilentlyContinue) { $Python = 'python' }
}
if (-not $Python -or -not (Test-GoodPython $Python)) {
    Fail 'no Python 3.10 or newer found. Install one (winget install -e --id Python.Python.3.12), open a new PowerShell, and run this again.'
}
$version = (Get-NativeOutput $Python @('-c', 'import platform; print(platform.python_version())')) | Select-Object -First 1
Write-Host "  python: $Python ($version)"
Write-Host "  venv: $Venv"

# --- 2. virtual camera and microphone: check and guide ----------------------------------------------------

Step 'Virtual camera (OBS Virtual Camera or Unity Capture)'
if (Test-Path "Registry::HKEY_CLASSES_ROOT\CLSID\$ObsClsid") {
    Already 'the OBS Virtual Camera is registered (OBS itself need not run)'
} elseif (Test-Path "Registry::HKEY_CLASSES_ROOT\CLSID\$UnityClsid") {
    Already 'Unity Capture is registered'
} else {
    Warn 'no virtual camera is registered. Not installing one for you:'
    Note '  install OBS Studio 26 or newer: winget install -e --id OBSProject.OBSStudio  (or https://obsproject.com)'
    Note '  its installer registers the "OBS Virtual Camera" that Zoom, Teams and Meet list; OBS need not be running.'
    Note '  (Unity Capture works too: https://github.com/schellingb/UnityCapture)'
}

Step 'Virtual microphone (optional: VB-CABLE)'
$cable = $null
try { $cable = Get-CimInstance Win32_SoundDevice | Where-Object { $_.Name -like '*VB-Audio*' } | Select-Object -First 1 } catch { }
if ($cable) {
    Already "$($cable.Name)"
} else {
    Note 'not installed. To let the call hear your voice in step with the lips, install VB-CABLE from https://vb-audio.com/Cable/ (then restart Windows)'
}

# --- 3. the virtual environment and the package -----------------------------------------------------------

Step 'Virtual environment'
$venvWorks = (Test-Path $VenvPython) -and (Test-Native $VenvPython @('-c', 'import sys'))
if ($venvWorks) {
    Already $Venv
} else {
    $venvArgs = @('-m', 'venv', $Venv)
    if (Test-Path $Venv) {
        Change "recreating the broken virtual environment $Venv (its Python does not run)"
        $venvArgs = @('-m', 'venv', '--clear', $Venv)
    } else {
        Change "creating the virtual environment $Venv"
    }
    if ((Invoke-Change $Python $venvArgs) -ne 0) { Fail 'could not create the virtual environment (see above)' }
}

# What pip would install from this repository, hashed: a changed file means a reinstall, the same files none.
# (Single quotes only: see Invoke-Change.)
$fingerprintCode = @'
import hashlib, pathlib, sys
repo = pathlib.Path(sys.argv[1])
h = hashlib.sha256()
for top in ('pyproject.toml', 'README.md', 'avatar_cam', 'models', 'tray_assets'):
    p = repo / top
    for f in sorted([p] if p.is_file() else p.rglob('*') if p.is_dir() else []):
        if f.is_file() and '__pycache__' not in f.parts and f.suffix != '.pyc':
            h.update(f.relative_to(repo).as_posix().encode() + b'\0' + f.read_bytes())
print(h.hexdigest())
'@

Step 'The avatar-cam package'
$installId = 'source=' + ((Get-NativeOutput $Python @('-c', $fingerprintCode, $Repo)) | Select-Object -First 1)
$current = $null
if (Test-Path $Marker) { $current = (Get-Content -Raw $Marker).Trim() }
$installed = (Test-Path $Exe) -and (Test-Native $Exe @('--version'))
if (-not $Reinstall -and $installed -and $current -eq $installId) {
    Already 'avatar-cam from this source is installed in the venv'
} else {
    Change "installing avatar-cam from $Repo and its dependencies into the venv (several hundred MB the first time)"
    if ((Invoke-Change $VenvPython @('-m', 'pip', 'install', '--disable-pip-version-check', $Repo)) -ne 0) {
        Fail 'pip could not install the package (see above); fix that and run this script again'
    }
    if (-not $DryRun) { Set-Content -Path $Marker -Value $installId -Encoding ASCII }
}

# --- 4. command, PATH, Start menu -------------------------------------------------------------------------

Step 'Command and Start menu'
$cmdFile = Join-Path $BinDir 'avatar-cam.cmd'
# cmd.exe reads a .cmd in the OEM code page; %LOCALAPPDATA% keeps a non-ASCII user name out of the file.
$cmdTarget = $Exe
if ($Exe.StartsWith($env:LOCALAPPDATA + '\', [StringComparison]::OrdinalIgnoreCase)) {
    $cmdTarget = '%LOCALAPPDATA%' + $Exe.Substring($env:LOCALAPPDATA.Length)
}
$cmdText = "@`"$cmdTarget`" %*`r`n"
$oem = [System.Text.Encoding]::GetEncoding([System.Globalization.CultureInfo]::CurrentCulture.TextInfo.OEMCodePage)
if ((Test-Path $cmdFile) -and ([System.IO.File]::ReadAllText($cmdFile, $oem) -eq $cmdText)) {
    Already "$cmdFile"
} else {
    Change "writing $cmdFile (runs $Exe)"
    if (-not $DryRun) {
        New-Item -ItemType Directory -Force -Path $BinDir | Out-Null
        [System.IO.File]::WriteAllText($cmdFile, $cmdText, $oem)
    }
}
# The user PATH, read and written raw (REG_EXPAND_SZ, %VARS% kept): [Environment]::SetEnvironmentVariable
# would expand every entry and store a plain string.
$envKey = [Microsoft.Win32.Registry]::CurrentUser.OpenSubKey('Environment', $true)
$userPath = [string]$envKey.GetValue('Path', '', [Microsoft.Win32.RegistryValueOptions]::DoNotExpandEnvironmentNames)
if ((($userPath -split ';') | Where-Object { $_.TrimEnd('\') -eq $BinDir }) -or
    ([Environment]::ExpandEnvironmentVariables($userPath) -split ';') -contains $BinDir) {
    Already "$BinDir is on your user PATH"
} else {
    Change "adding $BinDir to your user PATH (it holds only avatar-cam.cmd; open a new terminal afterwards)"
    if (-not $DryRun) {
        $newPath = (@($userPath.TrimEnd(';'), $BinDir) | Where-Object { $_ }) -join ';'
        $envKey.SetValue('Path', $newPath, [Microsoft.Win32.RegistryValueKind]::ExpandString)
        # Setting and clearing a variable through .NET broadcasts WM_SETTINGCHANGE, so that terminals
        # opened from now on see the new PATH without signing out.
        [Environment]::SetEnvironmentVariable('AVATAR_CAM_INSTALL', '1', 'User')
        [Environment]::SetEnvironmentVariable('AVATAR_CAM_INSTALL', $null, 'User')
    }
}
$envKey.Close()

# Same target as avatar_cam/autostart.py: pythonw.exe -m avatar_cam (no console window), from the user's folder.
function Set-Shortcut([string]$Path, [string]$What) {
    $target = $VenvPythonW
    $arguments = '-m avatar_cam'
    if (Test-Path $Path) {
        $existing = (New-Object -ComObject WScript.Shell).CreateShortcut($Path)
        if ($existing.TargetPath -eq $target -and $existing.Arguments -eq $arguments) {
            Already "$Path"
            return
        }
    }
    Change "creating $What`: $Path ($target $arguments)"
    if ($DryRun) { return }
    New-Item -ItemType Directory -Force -Path (Split-Path $Path) | Out-Null
    $s = (New-Object -ComObject WScript.Shell).CreateShortcut($Path)
    $s.TargetPath = $target
    $s.Arguments = $arguments
    $s.WorkingDirectory = $env:USERPROFILE
    $s.Description = 'Avatar Cam'
    $s.Save()
}

Set-Shortcut $MenuShortcut 'the Start menu shortcut'

Step 'Start at login'
if ($Autostart) {
    Set-Shortcut $StartupShortcut 'the Startup shortcut'
    $cmdFallback = [System.IO.Path]::ChangeExtension($StartupShortcut, '.cmd')
    if (Test-Path $cmdFallback) {
        Change "removing $cmdFallback (replaced by the shortcut)"
        if (-not $DryRun) { Remove-Item $cmdFallback }
    }
} elseif (Test-Path $StartupShortcut) {
    Already "on ($StartupShortcut); left as it is"
} else {
    Note 'off (add -Autostart, or use the tray menu''s "Start at login")'
}

# --- 5. doctor --------------------------------------------------------------------------------------------

Step 'avatar-cam doctor'
if ($DryRun -or $NoDoctor) {
    Note 'not run (-DryRun or -NoDoctor); run it yourself: avatar-cam doctor'
} else {
    & $Exe doctor
    if ($LASTEXITCODE -eq 0) {
        Write-Host ''
        Write-Host 'Avatar Cam is installed. Start it from the Start menu ("Avatar Cam") or run: avatar-cam'
    } else {
        Write-Host ''
        Write-Host 'Avatar Cam is installed, but the doctor found problems (the !! lines above, each with its fix).'
        Write-Host 'Fix them and run: avatar-cam doctor'
    }
}
