"""The PEP 517 build backend of the filemap module.

It needs nothing but Python's standard library and a C compiler, so that
`pip install ./python` works with no network, pip's build isolation
included: setuptools would have to come from an index. It compiles the
extension (src/filemapmodule.c) together with libfilemap's sources, linked
statically, exporting only the module's init function, and writes the wheel
itself.

Environment: CC (default cc) and CFLAGS, added after the backend's own.
"""

import base64
import concurrent.futures
import hashlib
import io
import os
import shlex
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile

NAME = "filemap"
VERSION = "0.1.0"
SUMMARY = "Map local files, HTTP(S) URLs and S3 objects into memory, read in on first touch"
REQUIRES_PYTHON = ">=3.10"

# The directory of pyproject.toml: python/ in the repository, or an unpacked sdist.
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What an sdist holds of HERE, and of libfilemap.
SDIST_DIRS = ("backend", "filemap", "src", "tests")
SDIST_FILES = ("pyproject.toml", "README.md")


def libfilemap_dir():
    """libfilemap's directory: inside an sdist, or beside python/ in the repository."""
    for d in (os.path.join(HERE, "libfilemap"), os.path.join(os.path.dirname(HERE), "libfilemap")):
        if os.path.isfile(os.path.join(d, "include", "filemap.h")):
            return d
    raise RuntimeError(
        "filemap: libfilemap's sources (libfilemap/include/filemap.h) are neither in %s nor beside it: "
        "build from the filemap repository's python/ directory, or from an sdist" % HERE
    )


def wheel_tag():
    """The tag of a wheel for this interpreter: cpXY-cpXY-PLATFORM."""
    if sys.implementation.name != "cpython":
        raise RuntimeError("filemap: the extension is for CPython, not %s" % sys.implementation.name)
    version = "cp%d%d" % sys.version_info[:2]
    abi = version + ("d" if hasattr(sys, "gettotalrefcount") else "")
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return "%s-%s-%s" % (version, abi, platform)


def dist_info():
    return "%s-%s.dist-info" % (NAME, VERSION)


def metadata():
    readme = read(os.path.join(HERE, "README.md")).decode()
    return (
        "Metadata-Version: 2.1\n"
        "Name: %s\nVersion: %s\nSummary: %s\nRequires-Python: %s\n"
        "Description-Content-Type: text/markdown\n\n%s"
        % (NAME, VERSION, SUMMARY, REQUIRES_PYTHON, readme)
    ).encode()


def wheel_file(tag):
    return ("Wheel-Version: 1.0\nGenerator: filemap_backend %s\nRoot-Is-Purelib: false\nTag: %s\n"
            % (VERSION, tag)).encode()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def compiler():
    return shlex.split(os.environ.get("CC") or "cc")


def run(argv):
    """run runs a compiler command; its failure says what was run and what it printed."""
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise RuntimeError("filemap: %s failed (exit status %d):\n%s"
                           % (shlex.join(argv), p.returncode, p.stdout.decode(errors="replace")))
    if p.stdout:
        sys.stderr.write(p.stdout.decode(errors="replace"))


def python_include():
    inc = sysconfig.get_paths()["include"]
    if not os.path.isfile(os.path.join(inc, "Python.h")):
        raise RuntimeError(
            "filemap: Python.h is not in %s: install Python's headers (Debian: apt-get install python%d.%d-dev)"
            % (inc, *sys.version_info[:2])
        )
    return inc


def build_extension(out_dir):
    """build_extension compiles the module and libfilemap into out_dir and returns the file made.

    libfilemap is compiled as its Makefile does (C11, hidden visibility),
    without -Werror: a newer compiler's new warning should not stop an
    install. The version script leaves PyInit__filemap the only symbol
    exported, so that no other copy of libfilemap in the process (a
    libfilemap.so loaded globally) can take the place of ours.
    """
    lib = libfilemap_dir()
    cc = compiler()
    extra = shlex.split(os.environ.get("CFLAGS", ""))
    common = ["-O2", "-g", "-fPIC", "-pthread", "-fvisibility=hidden", "-Wall", "-Wextra",
              "-I", os.path.join(lib, "include")]
    jobs = []
    src = os.path.join(lib, "src")
    for name in sorted(os.listdir(src)):
        if name.endswith(".c"):
            obj = os.path.join(out_dir, "libfilemap-" + name[:-2] + ".o")
            jobs.append((cc + ["-std=c11", "-D_GNU_SOURCE"] + common + extra
                         + ["-c", "-o", obj, os.path.join(src, name)], obj))
    module_obj = os.path.join(out_dir, "filemapmodule.o")
    # CPython calls methods with arguments they may not use.
    jobs.append((cc + ["-std=gnu11", "-Wno-unused-parameter"] + common + ["-I", python_include()] + extra
                 + ["-c", "-o", module_obj, os.path.join(HERE, "src", "filemapmodule.c")], module_obj))
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for f in [pool.submit(run, argv) for argv, _ in jobs]:
            f.result()
    script = os.path.join(out_dir, "exports.map")
    with open(script, "w") as f:
        f.write("{ global: PyInit__filemap; local: *; };\n")
    ext = os.path.join(out_dir, "_filemap" + sysconfig.get_config_var("EXT_SUFFIX"))
    run(cc + ["-shared", "-o", ext] + [obj for _, obj in jobs] + extra
        + ["-pthread", "-ldl", "-Wl,--version-script=" + script])
    return ext


def record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d\n" % (path, digest, len(data))


def write_wheel(path, files):
    """write_wheel writes files ({name: (bytes, mode)}) and their RECORD as a wheel."""
    record = "".join(record_line(name, data) for name, (data, _) in files.items())
    record += "%s/RECORD,,\n" % dist_info()
    files = dict(files)
    files["%s/RECORD" % dist_info()] = (record.encode(), 0o644)
    date = time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", "315532800")))[:6]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, (data, mode) in files.items():
            info = zipfile.ZipInfo(name, date)
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)


def package_files():
    """The pure Python files of the package, as the wheel names them."""
    pkg = os.path.join(HERE, "filemap")
    return {"filemap/" + n: (read(os.path.join(pkg, n)), 0o644)
            for n in sorted(os.listdir(pkg)) if n.endswith((".py", ".pyi", ".typed"))}


# PEP 517 hooks.

def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    d = os.path.join(metadata_directory, dist_info())
    os.makedirs(d, exist_ok=True)
    for name, data in (("METADATA", metadata()), ("WHEEL", wheel_file(wheel_tag()))):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    return dist_info()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    tag = wheel_tag()
    files = package_files()
    with tempfile.TemporaryDirectory(prefix="filemap-build-") as tmp:
        ext = build_extension(tmp)
        files["filemap/" + os.path.basename(ext)] = (read(ext), 0o755)
    files["%s/METADATA" % dist_info()] = (metadata(), 0o644)
    files["%s/WHEEL" % dist_info()] = (wheel_file(tag), 0o644)
    files["%s/top_level.txt" % dist_info()] = (b"filemap\n", 0o644)
    name = "%s-%s-%s.whl" % (NAME, VERSION, tag)
    write_wheel(os.path.join(wheel_directory, name), files)
    return name


def build_sdist(sdist_directory, config_settings=None):
    """build_sdist packs python/ with libfilemap's interface and sources, which the wheel is built from."""
    base = "%s-%s" % (NAME, VERSION)
    lib = libfilemap_dir()
    members = [(os.path.join(HERE, f), f) for f in SDIST_FILES]
    for d in SDIST_DIRS:
        members += walk(os.path.join(HERE, d), d)
    for d in ("include", "src"):
        members += walk(os.path.join(lib, d), "libfilemap/" + d)
    name = base + ".tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz", format=tarfile.PAX_FORMAT) as tar:
        pkg_info = metadata()
        info = tarfile.TarInfo(base + "/PKG-INFO")
        info.size, info.mode = len(pkg_info), 0o644
        tar.addfile(info, io.BytesIO(pkg_info))
        for path, arc in members:
            tar.add(path, arcname=base + "/" + arc, recursive=False)
    return name


def walk(root, arc):
    """walk lists root's files, but not Python's caches, as (path, name in the archive)."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for f in sorted(files):
            if not f.endswith(".pyc"):
                p = os.path.join(d, f)
                out.append((p, arc + "/" + os.path.relpath(p, root).replace(os.sep, "/")))
    return out
