"""Per-function containers: a registered function runs only on workers inside its container image.

    python examples/containers.py --image localhost/my-science:1.0   # an image with python3 + faasx
    python examples/containers.py --demo                             # builds a throw-away demo image

Needs podman (rootful here; see docs/containers.md for the containers.conf this machine kind needs).
The demo image is busybox plus a marker file, with the host's Python and this checkout bind-mounted
read-only -- the way the tests run without any registry.  A real image has python3 and the same
faasx, dill and Python version installed.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import faasx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def where_am_i():
    import os
    try:
        with open("/etc/faasx-demo-marker") as f:
            return "inside the container: " + f.read().strip()
    except FileNotFoundError:
        return f"on the host (pid {os.getpid()})"


def build_demo_image() -> str:
    work = tempfile.mkdtemp(prefix="faasx-demo-image-")
    rootfs = os.path.join(work, "rootfs")
    for d in ("bin", "etc", "tmp", "usr"):
        os.makedirs(os.path.join(rootfs, d))
    shutil.copy2(shutil.which("busybox"), os.path.join(rootfs, "bin", "busybox"))
    for applet in ("sh", "cat", "env", "sleep", "kill"):
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    os.symlink("usr/lib", os.path.join(rootfs, "lib"))
    os.symlink("usr/lib64", os.path.join(rootfs, "lib64"))
    with open(os.path.join(rootfs, "etc", "faasx-demo-marker"), "w") as f:
        f.write("faasx demo image\n")
    tar = os.path.join(work, "rootfs.tar")
    subprocess.run(["tar", "-C", rootfs, "-cf", tar, "."], check=True)
    image = f"localhost/faasx-demo:{uuid.uuid4().hex[:8]}"
    subprocess.run(["podman", "import", "--quiet", tar, image], check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(work)
    return image


def demo_options() -> list:
    dirs = ["/usr"] + sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)} - {"/usr"})
    return [f"--volume={d}:{d}:ro" for d in dirs] + [
        f"--volume={ROOT}:{ROOT}:ro", f"--env=PYTHONPATH={ROOT}",
        f"--env=PATH={os.path.dirname(sys.executable)}:/usr/bin:/bin"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", help="an image with python3 and faasx installed")
    parser.add_argument("--demo", action="store_true", help="build and use a throw-away demo image")
    args = parser.parse_args()
    if not (args.image or args.demo):
        parser.error("give --image IMAGE or --demo")
    image = args.image or build_demo_image()
    spec = {"type": "podman", "image": image, "options": demo_options() if args.demo else []}
    try:
        with faasx.Executor(max_workers_per_node=2) as ex:
            print("plain function:", ex.submit(where_am_i).result())
            fid = ex.register_function(where_am_i, container=spec)
            t = time.perf_counter()
            print("container function:", ex.submit(fid).result(timeout=300),
                  f"(cold: {1000 * (time.perf_counter() - t):.0f} ms, container started)")
            t = time.perf_counter()
            ex.submit(fid).result(timeout=60)
            print(f"second call: {1000 * (time.perf_counter() - t):.1f} ms (warm worker reused)")
    finally:
        if args.demo:
            subprocess.run(["podman", "rmi", "-f", image], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
