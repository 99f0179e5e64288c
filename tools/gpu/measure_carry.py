"""Measure what the first GPU call has to carry for vLLM: download the vLLM wheel and, package by package
(``pip download --no-deps``), every dependency it needs that the GPU image does not list, for the image's Python
(CPython 3.12, x86_64 manylinux); write their names, versions and sizes to one JSON that
``tools/gpu/smoke.sh --dry-run`` prints.

    python tools/gpu/measure_carry.py [--version 0.24.0] [--dest /tmp/vllm-carry] \
        [--out tools/bench/results/vllm_carry.json]

What it cannot know: tools/gpu/image_packages.txt lists the image's package *names* only, so a requirement met by
name is counted as present whatever version it asks for (the JSON lists these with their specifiers); torch,
triton and the nvidia-*/cuda-* libraries are the image's own (vLLM pins the image's torch: checked here).
Needs network access to PyPI (this CPU machine has it; the GPU machine does not).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64", "manylinux1_x86_64"]
# The GPU image's interpreter and platform, for evaluating requirement markers.
ENV = dict(default_environment(), python_version="3.12", python_full_version="3.12.3", implementation_name="cpython",
           platform_python_implementation="CPython", sys_platform="linux", platform_system="Linux",
           platform_machine="x86_64", os_name="posix", extra="")
PART_MIB = 60  # fetch_wheels.sh's default part size
CALL_MIB = 64  # what one device call may carry, working tree included


def image_names(path: Path) -> set[str]:
    return {canonicalize_name(line.strip()) for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def from_image(name: str, image: set[str]) -> bool:
    """torch, triton and the CUDA libraries are always the image's; anything else the image lists by name."""
    return name in ("torch", "triton") or bool(re.fullmatch(r"(nvidia|cuda)-.*", name)) or name in image


def download(spec: str, dest: Path) -> Path:
    """`pip download --no-deps` one requirement for the GPU image's Python; returns the wheel it saved."""
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", "--abi", "cp312", *[a for p in PLATFORMS for a in ("--platform", p)],
           "-d", str(dest), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"pip download {spec!r} failed (is PyPI reachable?):\n{proc.stderr[-2000:]}")
    name = canonicalize_name(Requirement(spec).name)
    new = [w for w in set(dest.glob("*.whl")) - before] or \
        [w for w in dest.glob("*.whl") if canonicalize_name(w.name.split("-")[0]) == name]
    if len(new) != 1:
        raise SystemExit(f"pip download {spec!r}: expected one wheel in {dest}, found {[w.name for w in new]}")
    return new[0]


def requirements(wheel: Path) -> list[Requirement]:
    """The wheel's Requires-Dist entries that apply on the GPU image (no extras)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(z.read(meta).decode())
    out = []
    for line in msg.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(ENV):
            out.append(req)
    return out


def measure(version: str, dest: Path, image: set[str]) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    t0 = time.monotonic()
    carried: dict[str, dict] = {}
    from_image_reqs: dict[str, list[str]] = {}
    conflicts: dict[str, str] = {}  # name -> why no version met every requirement
    asked: dict[str, SpecifierSet] = {}  # name -> every specifier met so far
    queue = [Requirement(f"vllm=={version}")]
    torch_pin = ""
    while queue:
        req = queue.pop(0)
        name = canonicalize_name(req.name)
        if name == "torch":
            torch_pin = torch_pin or str(req.specifier)
        if from_image(name, image) and name != "vllm":
            specs = from_image_reqs.setdefault(name, [])
            if str(req.specifier) and str(req.specifier) not in specs:
                specs.append(str(req.specifier))
            continue
        asked.setdefault(name, SpecifierSet())
        asked[name] &= req.specifier
        if name in carried and req.specifier.contains(Version(carried[name]["version"]), prereleases=True):
            continue
        try:  # a wheel downloaded for an earlier requirement is replaced by one that meets all of them
            wheel = download(f"{req.name}{asked[name]}", dest)
        except SystemExit:
            # pip's resolver would backtrack to other versions of the requirers; this closure keeps the first wheel.
            counted = carried[name]["wheel"] if name in carried else "none"
            conflicts[name] = f"no single version meets {asked[name]}; counted: {counted}"
            continue
        if name in carried and carried[name]["wheel"] != wheel.name:
            (dest / carried[name]["wheel"]).unlink()
        carried[name] = {"version": wheel.name.split("-")[1], "wheel": wheel.name, "bytes": wheel.stat().st_size}
        queue.extend(requirements(wheel))
    total = sum(p["bytes"] for p in carried.values())
    return {
        "vllm_version": version, "python": "cp312 manylinux x86_64",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "download_s": round(time.monotonic() - t0, 1),
        "vllm_wheel_bytes": carried["vllm"]["bytes"],
        "carried_packages": len(carried), "carried_bytes": total,
        "parts_of_60_mib": -(-total // (PART_MIB * 2**20)),
        "vllm_requires_torch": torch_pin,
        "carried": dict(sorted(carried.items(), key=lambda kv: -kv[1]["bytes"])),
        "assumed_in_image": {k: ", ".join(v) or "any" for k, v in sorted(from_image_reqs.items())},
        "conflicts": conflicts,
        "not_measured": ("versions of the image's own packages (image_packages.txt lists names only): if vLLM "
                         "needs another version of one of those, pip fails offline and that wheel must be carried "
                         "too; install time on the GPU machine (no GPU lent)"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", default="0.24.0", help="vLLM release (default 0.24.0, tools/gpu's choice)")
    ap.add_argument("--dest", type=Path, default=Path("/tmp/vllm-carry"), help="download folder (default %(default)s)")
    ap.add_argument("--image", type=Path, default=ROOT / "tools/gpu/image_packages.txt",
                    help="the GPU image's package names (default %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "tools/bench/results/vllm_carry.json",
                    help="result JSON (default %(default)s)")
    args = ap.parse_args(argv)
    result = measure(args.version, args.dest, image_names(args.image))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"vLLM {result['vllm_version']}: {result['carried_packages']} wheels not in the image, "
          f"{result['carried_bytes'] / 2**20:.1f} MiB (vLLM's own {result['vllm_wheel_bytes'] / 2**20:.1f} MiB), "
          f"{result['parts_of_60_mib']} parts of {PART_MIB} MiB; vLLM requires torch {result['vllm_requires_torch']}"
          f"; conflicts: {len(result['conflicts'])} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
