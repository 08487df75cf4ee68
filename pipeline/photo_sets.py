"""Freely licensed photos from Debian's wallpaper packages: more training photos and a held-out
evaluation set of clean, smooth photos.

    python -m pipeline.photo_sets --out data/photos

writes `data/photos/train_extra/` (12 photos, longer side at most 1280 px, PNG: add them to
the training glob, e.g. `--train_glob 'data/photos/train_extra/*,TRAIN/*/*'`),
`data/photos/heldout/` (14 photos, longer side at most 640 px, PNG: never used for training)
and `LICENSES.md` (each photo's package, version, author and license, from the packages'
copyright files). The packages are fetched with `apt-get download` (a Debian or Ubuntu
machine; no root needed) and unpacked in Python. The photos are downscaled with Pillow's
Lanczos filter, which removes the sources' JPEG artifacts and sensor noise.

Nothing in the repository needs these folders: the tests that use them skip without them.
"""

import argparse
import glob
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile

from PIL import Image

# (package, file inside the package, author, license); the licenses are those of the
# packages' debian/copyright files (plasma-workspace-wallpapers: "Files: *", GPL-2+).
_PLASMA = "plasma-workspace-wallpapers"
_LOMIRI_16 = "lomiri-wallpapers-16.04"
_LOMIRI_20 = "lomiri-wallpapers-20.04"
TRAIN_EXTRA = [(_PLASMA, f"usr/share/wallpapers/{name}", "KDE Plasma artists", "GPL-2+")
               for name in ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour",
                            "EveningGlow", "FallenLeaf", "Grey", "Kite", "OneStandsOut",
                            "Path", "summer_1am")] + [
    (_LOMIRI_20, "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg", "Lukas Baubkus",
     "CC-BY-SA-3.0")]
HELDOUT = [(_LOMIRI_16, f"usr/share/backgrounds/{name}_by_{author.replace(' ', '_')}.jpg",
            author, license_)
           for name, author, license_ in (
               ("Bridge", "Sander Klootwijk", "CC-BY-SA-4.0"),
               ("Dragonfly", "Bolly", "CC-BY-SA-4.0"),
               ("Picture_0B", "freespace", "CC-BY-4.0"),
               ("Picture_1A", "freespace", "CC-BY-4.0"),
               ("Wine", "Jakkub Mede", "CC-BY-4.0"),
               ("aitzgorri", "Aitzol Berasategi", "CC-BY-4.0"),
               ("free", "Peter Nerlich", "CC-BY-SA-4.0"),
               ("friends", "Aitzol Berasategi", "CC-BY-4.0"),
               ("greentock", "Peter Nerlich", "CC-BY-SA-4.0"),
               ("life", "Aitzol Berasategi", "CC-BY-4.0"),
               ("picosdeeuropa", "Aitzol Berasategi", "CC-BY-4.0"),
               ("seeding", "Clements Engelhardt", "CC0-1.0"),
               ("sunset", "Aitzol Berasategi", "CC-BY-4.0"),
               ("umang", "Abhishek Mudgal", "CC-BY-4.0"))]
TRAIN_SIDE = 1280
HELDOUT_SIDE = 640


class PhotoSetError(RuntimeError):
    """A package that cannot be fetched or does not hold the expected photo."""


def _deb_members(deb):
    """The files of a .deb's data archive: {path: bytes} (ar archive, then tar)."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise PhotoSetError(f"{deb} is not a Debian package")
        while True:
            header = f.read(60)
            if len(header) < 60:
                raise PhotoSetError(f"{deb} has no data archive")
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58])
            body = f.read(size)
            f.read(size % 2)
            if name.startswith("data.tar"):
                break
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        return {m.name.lstrip("./"): archive.extractfile(m).read()
                for m in archive.getmembers() if m.isfile()}


def _download(packages, folder):
    """Fetch `packages` with apt-get into `folder`: {package: (version, path)}."""
    try:
        subprocess.run(["apt-get", "download", *packages], cwd=folder, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise PhotoSetError("apt-get is not available: run this on a Debian or Ubuntu "
                            "machine") from None
    except subprocess.CalledProcessError as error:
        raise PhotoSetError(f"apt-get download failed: "
                            f"{error.stderr.decode().strip().splitlines()[-1]} (run "
                            "'apt-get update' first)") from None
    found = {}
    for package in packages:
        debs = glob.glob(os.path.join(folder, f"{package}_*.deb"))
        if not debs:
            raise PhotoSetError(f"apt-get download wrote no package {package}")
        version = os.path.basename(debs[0]).split("_")[1].replace("%3a", ":")
        found[package] = (version, debs[0])
    return found


def _largest_image(members, path):
    """The bytes of `path`, or of the largest image under the wallpaper folder `path`."""
    if path in members:
        return members[path]
    images = [name for name in members if name.startswith(path + "/contents/images/")]
    if not images:
        raise PhotoSetError(f"no photo at {path} in its package")
    return members[max(images, key=lambda name: len(members[name]))]


def _downscaled(data, side):
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = side / max(image.size)
    if scale < 1:
        size = tuple(max(1, round(v * scale)) for v in image.size)
        image = image.resize(size, Image.LANCZOS)
    return image


def _stem(path):
    return re.sub(r"\W+", "_", os.path.splitext(os.path.basename(path.rstrip("/")))[0])


def build(out):
    """Write train_extra/, heldout/ and LICENSES.md under `out`; returns the photo counts."""
    sets = (("train_extra", TRAIN_EXTRA, TRAIN_SIDE), ("heldout", HELDOUT, HELDOUT_SIDE))
    packages = sorted({entry[0] for _, entries, _ in sets for entry in entries})
    lines = ["# Photos and their licenses", "",
             "Made by `python -m pipeline.photo_sets`, from Debian packages (downscaled with "
             "Lanczos; longer side at most "
             f"{TRAIN_SIDE} px for training, {HELDOUT_SIDE} px held out).", "",
             "| file | package (version) | source file | author | license |",
             "|---|---|---|---|---|"]
    counts = {}
    with tempfile.TemporaryDirectory() as folder:
        debs = _download(packages, folder)
        members = {package: _deb_members(path) for package, (_, path) in debs.items()}
        for name, entries, side in sets:
            target = os.path.join(out, name)
            os.makedirs(target, exist_ok=True)
            for package, path, author, license_ in entries:
                image = _downscaled(_largest_image(members[package], path), side)
                file = os.path.join(target, _stem(path) + ".png")
                image.save(file + ".tmp", format="PNG")
                os.replace(file + ".tmp", file)
                lines.append(f"| {name}/{os.path.basename(file)} | {package} "
                             f"({debs[package][0]}) | {path} | {author} | {license_} |")
            counts[name] = len(entries)
    with open(os.path.join(out, "LICENSES.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("data", "photos"),
                        help="Folder for train_extra/, heldout/ and LICENSES.md.")
    args = parser.parse_args(argv)
    try:
        counts = build(args.out)
    except (PhotoSetError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: " + ", ".join(f"{n} photos in {k}/" for k, n in counts.items())
          + "; licenses in LICENSES.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
