"""Real photos that ship inside scikit-image's wheel, for the demo, tests and toy training.

Public-domain or CC0 images (see scikit-image's data/README): NASA's astronaut, rocket and
Hubble deep field, Stefan van der Walt's coffee and chelsea, and others.
"""

import os
import shutil

TRAINING = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg",
            "ihc.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg")
HELD_OUT = ("rocket.jpg",)


def data_folder():
    """scikit-image's bundled data folder (ImportError with a hint when not installed)."""
    try:
        import skimage.data
    except ImportError as error:
        raise ImportError("sample photos need scikit-image: pip install -r requirements.txt") \
            from error
    return os.path.dirname(skimage.data.__file__)


def export(folder, names=TRAINING):
    """Copy the named sample photos into `folder`; returns their new paths."""
    os.makedirs(folder, exist_ok=True)
    source = data_folder()
    paths = []
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            shutil.copyfile(os.path.join(source, name), path)
        paths.append(path)
    return paths
