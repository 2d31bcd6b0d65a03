"""Block devices and a GPU for sandbox instances, where a volume is a folder (standard library only).

The executables next to this file (`mount`, `umount`, `mkfs.xfs`, `mkfs.ext4`, `blkid`, `lsblk`, `mountpoint`,
`dd`, `nvidia-smi`, `shutdown`, `poweroff`) call `main(<name>, argv)`. They run on a sandbox instance, whose root folder
is `$TRAINCTL_ROOT`: a path written for AWS (`/dev/sdf`, `/mnt/data`) is mapped under it, so scripts run unchanged.

A volume folder holds `volume.json` (id, size), `fstype` and `uuid` (written by mkfs) and the data folder `fs/`.
Attach links `$TRAINCTL_ROOT/dev/nvmeNn1` to the volume folder (plus `/dev/disk/by-id/...` and `/dev/sdX`);
mount replaces the empty mount point by a symlink to `fs/` and records it in `$TRAINCTL_ROOT/proc/mounts`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MOUNT_FAILURE = 32  # mount(8), umount(8) and mountpoint(1) exit status for "failure"
_NVME = re.compile(r"^nvme(\d+)n1$")


# -- paths ---------------------------------------------------------------------------------------------------
def root() -> str:
    return os.environ.get("TRAINCTL_ROOT", "").rstrip("/")


def host(path: str) -> str:
    """The host path for an instance path: absolute paths outside the root are mapped under it."""
    r = root()
    if not r or not os.path.isabs(path) or path == r or path.startswith(r + "/"):
        return os.path.abspath(path)
    return os.path.normpath(r + "/" + path.lstrip("/"))


def guest(path: str) -> str:
    """The instance's view of a host path (what AWS scripts print and compare)."""
    r = root()
    path = os.path.abspath(path)
    if r and (path == r or path.startswith(r + "/")):
        return path[len(r) :] or "/"
    return path


def err(tool: str, message: str, code: int) -> int:
    print(f"{tool}: {message}", file=sys.stderr)
    return code


# -- volumes and devices -------------------------------------------------------------------------------------
class Volume:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def meta(self) -> dict[str, object]:
        try:
            data = json.loads((self.folder / "volume.json").read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    @property
    def id(self) -> str:
        return str(self.meta.get("VolumeId") or self.folder.name)

    @property
    def size_bytes(self) -> int:
        size = self.meta.get("Size", 8)
        return int(size if isinstance(size, int | float | str) else 8) * 1024**3

    @property
    def fstype(self) -> str | None:
        try:
            return (self.folder / "fstype").read_text().strip() or None
        except OSError:
            return None

    @property
    def uuid(self) -> str:
        try:
            return (self.folder / "uuid").read_text().strip()
        except OSError:
            return ""

    @property
    def label(self) -> str:
        try:
            return (self.folder / "label").read_text().strip()
        except OSError:
            return ""

    @property
    def data(self) -> Path:
        return self.folder / "fs"


def devices() -> list[tuple[str, Volume]]:
    """Attached volumes as (guest device path /dev/nvmeNn1, volume), in device order."""
    dev = Path(host("/dev"))
    found: list[tuple[int, str, Volume]] = []
    if dev.is_dir():
        for entry in dev.iterdir():
            m = _NVME.match(entry.name)
            if m and entry.is_symlink():
                target = Path(os.path.realpath(entry))
                if (target / "volume.json").exists():
                    found.append((int(m.group(1)), guest(str(entry)), Volume(target)))
    return [(name, vol) for _, name, vol in sorted(found, key=lambda item: item[0])]


def resolve(spec: str) -> tuple[str, Volume] | None:
    """A device spec (any /dev link, UUID=..., LABEL=...) → (canonical /dev/nvmeNn1, volume)."""
    if spec.startswith(("UUID=", "LABEL=")):
        key, _, value = spec.partition("=")
        value = value.strip('"')
        for name, vol in devices():
            if (key == "UUID" and vol.uuid == value) or (key == "LABEL" and vol.label == value):
                return name, vol
        return None
    target = Path(os.path.realpath(host(spec)))
    if not (target / "volume.json").exists():
        return None
    for name, vol in devices():
        if vol.folder == target:
            return name, vol
    return guest(host(spec)), Volume(target)


# -- mount table ---------------------------------------------------------------------------------------------
def table_path() -> Path:
    return Path(host("/proc/mounts"))


def read_table() -> list[list[str]]:
    try:
        return [line.split() for line in table_path().read_text().splitlines() if line.strip()]
    except OSError:
        return []


def write_table(entries: list[list[str]]) -> None:
    path = table_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".mounts.{os.getpid()}")
    tmp.write_text("".join(" ".join(e) + "\n" for e in entries))
    tmp.replace(path)


def mount_of(vol: Volume) -> str | None:
    """Where the volume is mounted (guest path), if anywhere on this instance."""
    for entry in read_table():
        if len(entry) >= 2 and entry[1] != "/":
            point = host(entry[1])
            if os.path.islink(point) and Path(os.path.realpath(point)) == vol.data.resolve():
                return entry[1]
    return None


# -- mkfs ----------------------------------------------------------------------------------------------------
def mkfs(fstype: str, argv: list[str]) -> int:
    tool = f"mkfs.{fstype}"
    force = quiet = False
    label = ""
    positional: list[str] = []
    with_value = set("LmbdilnrsEOTNUIJG")
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-f", "-F"):
            force = True
        elif arg == "-q":
            quiet = True
        elif arg.startswith("-") and len(arg) >= 2 and arg[1] in with_value:
            value = arg[2:] if len(arg) > 2 else (argv[i + 1] if i + 1 < len(argv) else "")
            if len(arg) == 2:
                i += 1
            if arg[1] == "L":
                label = value
        elif arg.startswith("-"):
            pass  # other flags change nothing a folder can show
        else:
            positional.append(arg)
        i += 1
    if not positional:
        return err(tool, "no device name given in argument list", 1)
    device = positional[0]
    found = resolve(device)
    if found is None:
        return err(tool, f"cannot open {device}: No such file or directory", 1)
    _, vol = found
    if mount_of(vol):
        return err(tool, f"cannot open {device}: Device or resource busy", 1)
    if vol.fstype and not force:
        if fstype == "xfs":
            print(f"{tool}: {device} appears to contain an existing filesystem ({vol.fstype}).", file=sys.stderr)
            print(f"{tool}: Use the -f option to force overwrite.", file=sys.stderr)
        else:
            print(f"{device} contains a {vol.fstype} file system\nProceed anyway? (y,N) ", file=sys.stderr)
        return 1
    shutil.rmtree(vol.data, ignore_errors=True)
    vol.data.mkdir(parents=True)
    fs_uuid = str(uuid.uuid4())
    (vol.folder / "uuid").write_text(fs_uuid + "\n")
    (vol.folder / "label").write_text(label + "\n")
    (vol.folder / "fstype").write_text(fstype + "\n")  # written last: the filesystem exists once it is there
    if not quiet:
        blocks = vol.size_bytes // 4096
        if fstype == "xfs":
            print(f"meta-data={device}              isize=512    agcount=4, agsize={blocks // 4} blks")
            print(f"data     =                       bsize=4096   blocks={blocks}, imaxpct=25")
        else:
            print(f"Creating filesystem with {blocks} 4k blocks and {blocks // 4} inodes")
            print(f"Filesystem UUID: {fs_uuid}")
            print("Writing superblocks and filesystem accounting information: done")
    return 0


# -- blkid ---------------------------------------------------------------------------------------------------
def blkid(argv: list[str]) -> int:
    output = "full"
    tags: list[str] = []
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-o", "-s", "-c", "-t", "-n", "-u") and i + 1 < len(argv):
            if arg == "-o":
                output = argv[i + 1]
            elif arg == "-s":
                tags.append(argv[i + 1])
            i += 1
        elif arg.startswith("-"):
            pass  # -p (low-level probe), -w, -g: nothing to change here
        else:
            positional.append(arg)
        i += 1
    targets: list[tuple[str, Volume]] = []
    if positional:
        for spec in positional:
            found = resolve(spec)
            if found is not None:
                targets.append((spec, found[1]))
    else:
        targets = devices()
    printed = False
    for name, vol in targets:
        fstype = vol.fstype
        if not fstype:
            continue  # no filesystem: blkid says nothing (exit 2 if nothing at all matched)
        values = {"UUID": vol.uuid, "BLOCK_SIZE": "512" if fstype == "xfs" else "4096", "TYPE": fstype}
        if vol.label:
            values = {"LABEL": vol.label, **values}
        if tags:
            values = {k: v for k, v in values.items() if k in tags}
        if not values:
            continue
        printed = True
        if output == "value":
            for value in values.values():
                print(value)
        elif output == "export":
            print(f"DEVNAME={name}")
            for key, value in values.items():
                print(f"{key}={value}")
        elif output == "device":
            print(name)
        else:
            print(f"{name}: " + " ".join(f'{k}="{v}"' for k, v in values.items()))
    return 0 if printed else 2


# -- mount / umount / mountpoint -----------------------------------------------------------------------------
def _mount_one(device: str, directory: str, fstype: str | None, options: str) -> int:
    found = resolve(device)
    point = host(directory)
    gpoint = guest(point)
    if found is None:
        return err("mount", f"{gpoint}: special device {device} does not exist.", MOUNT_FAILURE)
    name, vol = found
    if any(len(e) >= 2 and e[1] == gpoint for e in read_table()):
        return err("mount", f"{gpoint}: {name} already mounted on {gpoint}.", MOUNT_FAILURE)
    if not os.path.isdir(point) or os.path.islink(point):
        return err("mount", f"{gpoint}: mount point does not exist.", MOUNT_FAILURE)
    if not vol.fstype or (fstype and fstype not in ("auto", vol.fstype)):
        return err(
            "mount",
            f"{gpoint}: wrong fs type, bad option, bad superblock on {name}, missing codepage or helper program, "
            "or other error.",
            MOUNT_FAILURE,
        )
    if os.listdir(point):
        return err("mount", f"{gpoint}: the sandbox can only mount on an empty directory.", MOUNT_FAILURE)
    os.rmdir(point)
    os.symlink(vol.data, point)  # the mount point now shows the volume's data
    entries = read_table()
    entries.append([name, gpoint, vol.fstype, options or "rw,relatime", "0", "0"])
    write_table(entries)
    return 0


def _fstab() -> list[list[str]]:
    try:
        lines = Path(host("/etc/fstab")).read_text().splitlines()
    except OSError:
        return []
    return [line.split() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def mount(argv: list[str]) -> int:
    fstype: str | None = None
    options = ""
    mount_all = False
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-t", "--types") and i + 1 < len(argv):
            fstype = argv[i + 1]
            i += 1
        elif arg in ("-o", "--options") and i + 1 < len(argv):
            options = argv[i + 1]
            i += 1
        elif arg in ("-a", "--all"):
            mount_all = True
        elif arg.startswith("-"):
            pass  # -v, -n, ...
        else:
            positional.append(arg)
        i += 1
    if mount_all:
        status = 0
        mounted = {e[1] for e in read_table() if len(e) >= 2}
        for entry in _fstab():
            if len(entry) < 3 or entry[1] in ("/", "none", "swap") or entry[1] in mounted:
                continue
            opts = entry[3] if len(entry) > 3 else "defaults"
            code = _mount_one(entry[0], entry[1], entry[2], opts)
            if code and "nofail" not in opts.split(","):
                status = code
        return status
    if not positional:
        for entry in read_table():
            if len(entry) >= 4:
                print(f"{entry[0]} on {entry[1]} type {entry[2]} ({entry[3]})")
        return 0
    if len(positional) == 1:
        for entry in _fstab():
            if len(entry) >= 3 and positional[0] in (entry[0], entry[1]):
                return _mount_one(entry[0], entry[1], fstype or entry[2], options or entry[3])
        return err("mount", f"{positional[0]}: can't find in /etc/fstab.", 1)
    return _mount_one(positional[0], positional[1], fstype, options)


def umount(argv: list[str]) -> int:
    targets = [a for a in argv if not a.startswith("-")]
    if not targets:
        return err("umount", "bad usage", 1)
    status = 0
    for target in targets:
        entries = read_table()
        gtarget = guest(host(target))
        found = resolve(target) if os.path.islink(host(target)) or target.startswith("/dev") else None
        match = None
        for entry in entries:
            if len(entry) < 2 or entry[1] == "/":
                continue
            if entry[1] == gtarget or entry[0] == target or (found is not None and entry[0] == found[0]):
                match = entry
                break
        if match is None:
            status = err("umount", f"{gtarget}: not mounted.", MOUNT_FAILURE)
            continue
        point = host(match[1])
        if os.path.islink(point):
            os.unlink(point)
        os.makedirs(point, exist_ok=True)
        write_table([e for e in entries if e is not match])
    return status


def mountpoint(argv: list[str]) -> int:
    quiet = "-q" in argv or "--quiet" in argv
    targets = [a for a in argv if not a.startswith("-")]
    if not targets:
        return err("mountpoint", "bad usage", 1)
    point = host(targets[0])
    gpoint = guest(point)
    if not os.path.exists(point):
        return err("mountpoint", f"{targets[0]}: No such file or directory", 1)
    mounted = gpoint == "/" or any(len(e) >= 2 and e[1] == gpoint for e in read_table())
    if not quiet:
        print(f"{targets[0]} is {'' if mounted else 'not '}a mountpoint")
    return 0 if mounted else MOUNT_FAILURE


# -- lsblk ---------------------------------------------------------------------------------------------------
_DEFAULT_COLUMNS = ["NAME", "MAJ:MIN", "RM", "SIZE", "RO", "TYPE", "MOUNTPOINTS"]
_COLUMNS = frozenset(
    {"NAME", "KNAME", "PATH", "MAJ:MIN", "RM", "RO", "SIZE", "TYPE", "SERIAL", "MODEL"}
    | {"MOUNTPOINT", "MOUNTPOINTS", "FSTYPE", "UUID", "LABEL"}
)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "K", "M", "G", "T", "P"):
        if value < 1024 or unit == "P":
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
        value /= 1024
    return str(size)


def _instance_info() -> dict[str, object]:
    try:
        data = json.loads(Path(host("/.sandbox/instance.json")).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


# lsblk's output options, by long and by short name ("raw": --raw, --list, -r, -l).
_LSBLK_LONG = {"json": "json", "noheadings": "noheadings", "bytes": "bytes", "paths": "paths", "pairs": "pairs"}
_LSBLK_LONG |= {"raw": "raw", "list": "raw"}
_LSBLK_SHORT = {"J": "json", "n": "noheadings", "b": "bytes", "p": "paths", "P": "pairs", "r": "raw", "l": "raw"}


@dataclass
class _LsblkArgs:
    columns: list[str] = field(default_factory=lambda: list(_DEFAULT_COLUMNS))
    positional: list[str] = field(default_factory=list)
    options: set[str] = field(default_factory=set)  # values of _LSBLK_LONG


def _lsblk_args(argv: list[str]) -> _LsblkArgs:
    args = _LsblkArgs()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--output="):
            args.columns = arg.split("=", 1)[1].upper().split(",")
        elif arg in ("-o", "--output") and i + 1 < len(argv):
            args.columns = argv[i + 1].upper().split(",")
            i += 1
        elif arg.startswith("-o") and len(arg) > 2:
            args.columns = arg[2:].upper().split(",")
        elif arg.startswith("--"):
            if arg[2:] in _LSBLK_LONG:
                args.options.add(_LSBLK_LONG[arg[2:]])
        elif arg.startswith("-"):
            args.options.update(_LSBLK_SHORT[letter] for letter in arg[1:] if letter in _LSBLK_SHORT)
        else:
            args.positional.append(arg)
        i += 1
    return args


def _lsblk_rows(positional: list[str]) -> list[dict[str, object]] | int:
    """The root disk and every attached volume (only the named ones, if any); an exit code for an unknown one."""
    info = _instance_info()
    root_size = int(str(info.get("root_size", 8))) * 1024**3
    root_serial = str(info.get("root_volume_id", "vol-00000000000000000")).replace("-", "")
    rows: list[dict[str, object]] = [
        {"dev": "/dev/nvme0n1", "size": root_size, "serial": root_serial, "mount": "/", "fstype": "xfs", "uuid": ""}
    ]
    for name, vol in devices():
        rows.append(
            {
                "dev": name,
                "size": vol.size_bytes,
                "serial": vol.id.replace("-", ""),
                "mount": mount_of(vol),
                "fstype": vol.fstype,
                "uuid": vol.uuid,
                "label": vol.label,
            }
        )
    if not positional:
        return rows
    wanted: set[str] = set()
    for spec in positional:
        found = resolve(spec)
        if found is None:
            if guest(host(spec)) == "/dev/nvme0n1":
                wanted.add("/dev/nvme0n1")
                continue
            print(f"lsblk: {spec}: not a block device", file=sys.stderr)
            return 32
        wanted.add(found[0])
    return [r for r in rows if r["dev"] in wanted]


def _lsblk_value(row: dict[str, object], column: str, args: _LsblkArgs) -> object:
    dev = str(row["dev"])
    m = _NVME.match(dev.rsplit("/", 1)[-1])
    number = int(m.group(1)) if m else 0
    size = int(str(row["size"]))
    getters: dict[str, Callable[[], object]] = {
        "NAME": lambda: dev if "paths" in args.options else dev.rsplit("/", 1)[-1],
        "KNAME": lambda: dev.rsplit("/", 1)[-1],
        "PATH": lambda: dev,
        "MAJ:MIN": lambda: f"259:{number}",
        "RM": lambda: False,
        "RO": lambda: False,
        "SIZE": lambda: size if "bytes" in args.options else _human(size),
        "TYPE": lambda: "disk",
        "SERIAL": lambda: row["serial"],
        "MODEL": lambda: "Amazon Elastic Block Store",
        "MOUNTPOINT": lambda: row["mount"],
        "MOUNTPOINTS": lambda: [row["mount"]],
        "FSTYPE": lambda: row.get("fstype"),
        "UUID": lambda: row.get("uuid") or None,
        "LABEL": lambda: row.get("label") or None,
    }
    getter = getters.get(column)
    return getter() if getter else None


def _lsblk_text(v: object) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, list):
        return "\n".join(_lsblk_text(x) for x in v if x is not None)
    return "" if v is None else str(v)


def _lsblk_print(table: list[list[str]], args: _LsblkArgs) -> None:
    """The text forms: pairs, raw, or aligned columns."""
    columns = args.columns
    if "pairs" in args.options:
        for line in table:
            print(" ".join(f'{c.replace(":", "_")}="{v}"' for c, v in zip(columns, line, strict=True)))
        return
    if "raw" in args.options:
        if "noheadings" not in args.options:
            print(" ".join(columns))
        for line in table:
            print(" ".join(line))
        return
    widths = [max([len(c)] + [len(line[k]) for line in table]) for k, c in enumerate(columns)]
    out: list[list[str]] = ([] if "noheadings" in args.options else [columns]) + table
    for line in out:
        cells = [
            cell.rjust(widths[k]) if columns[k] in ("SIZE", "RM", "RO") else cell.ljust(widths[k])
            for k, cell in enumerate(line)
        ]
        print(" ".join(cells).rstrip())


def lsblk(argv: list[str]) -> int:
    args = _lsblk_args(argv)
    rows = _lsblk_rows(args.positional)
    if isinstance(rows, int):
        return rows
    for column in args.columns:
        if column not in _COLUMNS:
            return err("lsblk", f"unknown column: {column}", 1)
    if "json" in args.options:
        devices_json = [{c.lower(): _lsblk_value(r, c, args) for c in args.columns} for r in rows]
        print(json.dumps({"blockdevices": devices_json}, indent=3))
        return 0
    _lsblk_print([[_lsblk_text(_lsblk_value(r, c, args)) for c in args.columns] for r in rows], args)
    return 0


# -- nvidia-smi ----------------------------------------------------------------------------------------------
_SMI_FAILED = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)


@dataclass
class _Gpus:
    """The instance's fake GPUs (`.sandbox/gpu.json`, written by the runtime)."""

    count: int
    utils: list[float]
    total: int
    name: str

    @property
    def used_by(self) -> list[int]:
        return [int(self.total * 0.9 * u / 100) for u in self.utils]

    def uuid(self, k: int) -> str:
        return f"GPU-{uuid.UUID(int=k + 1)}"


def _gpus() -> _Gpus | None:
    try:
        gpu = json.loads(Path(host("/.sandbox/gpu.json")).read_text())
    except (OSError, ValueError):
        return None
    count = int(gpu.get("count", 1))
    given = gpu.get("utilization", 0.0)  # one value for every GPU, or one per GPU
    utils = [float(u) for u in given] if isinstance(given, list) else [float(given)] * count
    return _Gpus(count, utils, int(gpu.get("memory_total", 23028)), str(gpu.get("name", "NVIDIA A10G")))


def _smi_query(gpus: _Gpus, query: list[str], fmt: list[str]) -> int:
    """`--query-gpu=...`: one CSV row per GPU (a header unless `noheader`, units unless `nounits`)."""
    used_by = gpus.used_by
    fields: dict[str, tuple[str, Callable[[int], str]]] = {
        "index": ("", str),
        "name": ("", lambda _: gpus.name),
        "uuid": ("", gpus.uuid),
        "count": ("", lambda _: str(gpus.count)),
        "driver_version": ("", lambda _: "550.54.15"),
        "utilization.gpu": ("%", lambda k: f"{gpus.utils[k]:.0f}"),
        "utilization.memory": ("%", lambda k: f"{gpus.utils[k] * 0.6:.0f}"),
        "memory.used": ("MiB", lambda k: str(used_by[k])),
        "memory.total": ("MiB", lambda _: str(gpus.total)),
        "memory.free": ("MiB", lambda k: str(gpus.total - used_by[k])),
        "temperature.gpu": ("", lambda k: str(30 + int(gpus.utils[k] * 0.4))),
        "power.draw": ("W", lambda k: f"{25 + gpus.utils[k] * 2:.2f}"),
    }
    for key in query:
        if key.strip() not in fields:
            print(f'Field "{key}" is not a valid field to query.', file=sys.stderr)
            return 2
    units = "nounits" not in fmt
    if "noheader" not in fmt:
        print(", ".join(f"{k} [{fields[k.strip()][0]}]" if fields[k.strip()][0] else k for k in query))
    for gpu_index in range(gpus.count):
        cells = []
        for key in query:
            unit, get = fields[key.strip()]
            cell = get(gpu_index)
            cells.append(f"{cell} {unit}" if units and unit else cell)
        print(", ".join(cells))
    return 0


def _smi_table(gpus: _Gpus) -> None:
    """nvidia-smi without arguments: its summary table."""
    used_by = gpus.used_by
    print("+-----------------------------------------------------------------------------------------+")
    print("| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |")
    print("|-----------------------------------------+------------------------+----------------------+")
    print("| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |")
    print("| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |")
    print("|=========================================+========================+======================|")
    for k in range(gpus.count):
        memory = f"{used_by[k]}MiB / {gpus.total}MiB"
        print(f"| {k:>3}  {gpus.name[:20]:<20}           On  |   00000000:00:1E.0 Off |                    0 |")
        util = gpus.utils[k]
        temp, power = 30 + int(util * 0.4), 25 + util * 2
        print(f"|  0%  {temp:>3}C    P0    {power:>5.0f}W / 300W | {memory:>22} | {util:>6.0f}%      Default |")
    print("+-----------------------------------------------------------------------------------------+")


def nvidia_smi(argv: list[str]) -> int:
    gpus = _gpus()
    if gpus is None:
        print(_SMI_FAILED)
        return 9
    query: list[str] = []
    fmt: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--query-gpu="):
            query = arg.split("=", 1)[1].split(",")
        elif arg == "--query-gpu" and i + 1 < len(argv):
            query = argv[i + 1].split(",")
            i += 1
        elif arg.startswith("--format="):
            fmt = arg.split("=", 1)[1].split(",")
        elif arg == "--format" and i + 1 < len(argv):
            fmt = argv[i + 1].split(",")
            i += 1
        elif arg in ("-L", "--list-gpus"):
            for k in range(gpus.count):
                print(f"GPU {k}: {gpus.name} (UUID: {gpus.uuid(k)})")
            return 0
        i += 1
    if query:
        return _smi_query(gpus, query, fmt)
    _smi_table(gpus)
    return 0


# -- dd --------------------------------------------------------------------------------------------------------
def dd(argv: list[str]) -> int:
    """`dd if=DEVICE of=/dev/null [bs=N]` over an attached volume reads it whole (as initialising a volume restored
    from a snapshot does on AWS): every file of its folder is read, and dd's summary gives the device's size. Any
    other use runs the real dd (the first one on PATH after the shims)."""
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    found = resolve(args["if"]) if "if" in args else None
    if found is None or host(args.get("of", "")) != host("/dev/null") or len(args) != len(argv):
        shims = os.path.dirname(os.path.realpath(__file__))
        path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if os.path.realpath(p) != shims)
        real = shutil.which("dd", path=path)
        if real is None:
            return err("dd", "no dd on PATH", 1)
        os.execv(real, [real, *argv])  # noqa: S606 (the system's dd, with the caller's arguments)
    _, vol = found
    for folder, _dirs, files in os.walk(vol.data):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                while f.read(1024 * 1024):
                    pass
    size = vol.size_bytes
    print(f"{size // 1024**2}+0 records in", file=sys.stderr)
    print(f"{size // 1024**2}+0 records out", file=sys.stderr)
    print(f"{size} bytes ({_human(size)}) copied", file=sys.stderr)
    return 0


TOOLS: dict[str, Callable[[list[str]], int]] = {
    "dd": dd,
    "mount": mount,
    "umount": umount,
    "mountpoint": mountpoint,
    "blkid": blkid,
    "lsblk": lsblk,
    "mkfs.xfs": lambda argv: mkfs("xfs", argv),
    "mkfs.ext4": lambda argv: mkfs("ext4", argv),
    "nvidia-smi": nvidia_smi,
    "shutdown": lambda argv: power_off("shutdown", argv),
    "poweroff": lambda argv: power_off("poweroff", argv),
}


# -- power ---------------------------------------------------------------------------------------------------
def power_off(tool: str, argv: list[str]) -> int:
    """`shutdown [-h|-P|-H] now|+0 [message]` and `poweroff [-f]`: ask the sandbox to take this instance down; it
    stops or terminates as its InstanceInitiatedShutdownBehavior says, a moment after this returns (as systemd)."""
    options = [a for a in argv if a.startswith("-")]
    when = [a for a in argv if not a.startswith("-")][:1]
    allowed = {"-h", "-P", "-H", "--poweroff", "--halt", "--no-wall"} if tool == "shutdown" else {"-f", "--force"}
    unsupported = [o for o in options if o not in allowed]
    if unsupported:
        return err(tool, f"sandbox: {' '.join(unsupported)} is not supported (only powering off)", 1)
    if tool == "shutdown" and when and when[0] not in ("now", "+0"):
        return err(tool, f"sandbox: only an immediate shutdown (now) is supported, not {when[0]}", 1)
    instance_id = _instance_info().get("instance_id")
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "").rstrip("/")
    if not instance_id or not endpoint:
        return err(tool, "sandbox: not on a sandbox instance (no instance id or endpoint)", 1)
    body = json.dumps({"instance_id": instance_id}).encode()
    request = urllib.request.Request(  # noqa: S310 (the sandbox's own http endpoint)
        f"{endpoint}/_sandbox/instance-shutdown", data=body, method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            answer.read()
    except (OSError, ValueError) as exc:
        return err(tool, f"sandbox: the shutdown request failed: {exc}", 1)
    return 0


def main(tool: str, argv: list[str]) -> int:
    try:
        return TOOLS[tool](argv)
    except OSError as exc:  # a folder operation failed: report it the way a tool would, never a traceback
        return err(tool, str(exc), 1 if tool.startswith(("mkfs", "nvidia")) else MOUNT_FAILURE)
