"""Draw docs/moving_mnist_clips.png (the first 4 test clips of Moving MNIST, every other frame) and
docs/moving_mnist_clip.gif (the first test clip). Clip i does not depend on the clip count, so these are the
first clips of the standard 10,000-clip test set too.

    python docs/make_moving_mnist_clips.py --data-dir ../shared/data/mnist
"""

import argparse
from pathlib import Path

from tarflow.data import load_video_dataset
from tarflow.video_io import save_frame_strip, save_gif

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--data-dir", default=None, help="the four MNIST IDX files (default: download into the cache)")
parser.add_argument("--out", default=str(Path(__file__).parent), help="output folder")
args = parser.parse_args()
test = load_video_dataset("moving-mnist", "test", args.data_dir, clip_count=4)
print(save_frame_strip(test.clips, Path(args.out) / "moving_mnist_clips.png", every=2, scale=2))
print(save_gif(test.clips[0], Path(args.out) / "moving_mnist_clip.gif", fps=10))
