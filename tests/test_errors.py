"""The error table: every user mistake we know of, run through ``alexnet.cli.main`` in this process.

Each row must exit 2 with one line on stderr (``alexnet COMMAND: error: ...``, no traceback) that holds the
row's fragment, and write nothing: the rows run in an empty working folder (``$ALEXNET_DATA`` inside it, every
--out under it) that must hold no file afterwards, and the shared fixtures must be unchanged. Every row fails
before any training or heavy work, so the whole module takes seconds.

``tests/usage_sites.py`` lists the ``raise UsageError`` sites this table and ``tests/test_errors_unusual.py``
(what no plain command line meets: torchrun, a full disk, an unreadable file, a GPU index beyond the visible
ones) are meant to reach; how to measure which they do is in its docstring and docs/testing.md.
"""

import io
import json
import shutil
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from usage_sites import usage_sites

from alexnet.errors import UsageError
from fixtures import TINY_CLASSES, caffe_blobs, recipe_checkpoint, refused, tiny_checkpoint, write_caffemodel

# (argv with {fixture} names, a fragment of the one-line message); ids below. {out} is a path that must not
# exist afterwards; {folder} names are under the module's fixture folder (see `made`).
ROWS = {
    # ---- the three, and config values checked where every config is made
    "train-negative-epochs": ("train --out {out} optim.epochs=-1", "optim.epochs=-1: must be at least 1"),
    "train-zero-batch": ("train --out {out} data.batch_size=0", "data.batch_size=0: must be at least 1"),
    "serve-port-too-high": ("serve --checkpoint {tiny} --port 70000", "--port 70000: a TCP port is 0..65535"),
    "serve-port-negative": ("serve --checkpoint {tiny} --port -1", "--port -1"),
    "train-nan-lr": ("train --out {out} optim.lr=nan", "optim.lr=nan: must be a finite number"),
    "train-inf-pca": ("train --out {out} data.pca_std=inf", "data.pca_std=inf"),
    "train-negative-lr": ("train --out {out} optim.lr=-0.1", "optim.lr=-0.1: must be at least 0"),
    "train-momentum-1": ("train --out {out} optim.momentum=1", "optim.momentum=1.0: must be in [0, 1)"),
    "train-negative-seed": ("train --out {out} seed=-1", "seed=-1: must be at least 0"),
    "train-seed-word": ("train --out {out} seed=abc", "seed must be int, got 'abc'"),
    "train-epochs-float": ("train --out {out} optim.epochs=2.5", "optim.epochs must be int, got 2.5"),
    "train-bool-word": ("train --out {out} model.lrn=maybe", "model.lrn must be bool"),
    "train-mean-word": ("train --out {out} data.mean=abc", "data.mean must be tuple"),
    "train-std-two": ("train --out {out} data.std=[0.2,0.2]", "data.std=[0.2, 0.2]: must be three positive"),
    "train-std-zero": ("train --out {out} data.std=[0.2,0,0.2]", "data.std=[0.2, 0, 0.2]"),
    "train-limit-negative": ("train --out {out} data.limit=-5", "data.limit=-5: must be at least 0"),
    "train-val-limit": ("train --out {out} data.val_limit=-2", "data.val_limit must be -1"),
    "train-workers": ("train --out {out} data.workers=-5", "data.workers=-5: must be at least -1"),
    "train-eval-batch": ("train --out {out} data.eval_batch_size=0", "data.eval_batch_size=0"),
    "train-schedule": ("train --out {out} optim.schedule=linear", "optim.schedule='linear': must be one of plateau"),
    "train-precision": ("train --out {out} train.precision=fp8", "train.precision='fp8'"),
    "train-device-word": ("train --out {out} train.device=banana", "train.device='banana': must be auto, cpu"),
    "train-eval-every": ("train --out {out} train.eval_every=0", "train.eval_every=0"),
    "train-threads": ("train --out {out} train.threads=-1", "train.threads=-1"),
    "train-step-epochs": ("train --out {out} optim.step_epochs=0", "optim.step_epochs=0"),
    "train-smoothing": ("train --out {out} optim.label_smoothing=1", "optim.label_smoothing=1.0"),
    "train-final-lr": ("train --out {out} optim.final_lr_fraction=2", "optim.final_lr_fraction=2.0"),
    "train-recipe-empty": ("train --out {out} --recipe=", "unknown recipe ''; choose one of"),
    "train-misspelt-key": ("train --out {out} optim.epoch=3", "did you mean 'optim.epochs'?"),
    "train-misspelt-section": ("train --out {out} optm.lr=0.1", "did you mean 'optim.lr'?"),
    "train-unknown-key": ("train --out {out} nothing.here=1", "unknown config key 'nothing.here'"),
    "train-empty-key": ("train --out {out} =3", "override '=3' is not key=value"),
    "train-variant": ("train --out {out} model.variant=vgg", "model.variant must be one of paper"),
    "train-dropout": ("train --out {out} model.dropout=1", "model.dropout must be in [0, 1)"),
    "train-one-gpu": ("train --out {out} model.one_gpu=true", "model.one_gpu is the one-tower"),
    "train-input-size": ("train --out {out} model.input_size=0 data.low_res_size=0", "model.input_size=0"),
    "train-low-res": ("train --out {out} data.low_res_size=7 data.low_res_epochs=1", "data.low_res_size=7"),
    "train-shrink": ("train --out {out} data.shrink_size=64 data.shrink_epochs=1", "data.shrink_size=64"),
    "train-dataset": ("train --out {out} data.dataset=mnist", "data.dataset must be cifar10 or imagenet"),
    "train-eval-crops": ("train --out {out} train.eval_crops=3", "train.eval_crops must be one of 1, 2, 4, 10"),
    "train-eval-crops-imagenet": ("train --out {out} --recipe imagenet train.eval_crops=4", "train.eval_crops=4:"),
    "train-trainable": ("train --out {out} optim.trainable=fc9", "optim.trainable must be all"),
    "train-freeze-order": ("train --out {out} optim.freeze_after=[5,3]", "optim.freeze_after must be"),
    "train-pretrained-scale": ("train --out {out} optim.pretrained_lr_scale=2", "optim.pretrained_lr_scale"),
    "train-nonfinite": ("train --out {out} train.on_nonfinite=ignore", "train.on_nonfinite must be stop or skip"),
    "train-keep": ("train --out {out} train.keep_checkpoints=0", "train.keep_checkpoints"),
    "train-cached-all": ("train --out {out} train.cached_features=true", "train.cached_features trains on"),
    "train-cached-towers": ("train --out {out} train.cached_features=true optim.trainable=fc8 "
                            "model.tower_devices=cpu,cpu", "drop model.tower_devices"),
    "train-tower-devices": ("train --out {out} model.tower_devices=cuda:0", "model.tower_devices must be two"),
    "train-tower-no-towers": ("train --out {out} model.tower_devices=cpu,cpu model.towers=false",
                              "it needs model.variant paper or cifar"),
    "train-conv2-kernel": ("train --out {out} model.conv2_kernel=4", "model.conv2_kernel must be odd"),
    "train-lrn-k": ("train --out {out} model.lrn_k=0", "model.lrn_k must be > 0"),
    "train-pca-scale": ("train --out {out} data.pca_scale=cube", "data.pca_scale must be one of"),
    "train-resize": ("train --out {out} data.resize=crop", "data.resize must be one of"),
    "train-decode": ("train --out {out} data.decode=gpu", "data.decode must be cpu or device"),
    "train-low-res-negative": ("train --out {out} data.low_res_epochs=-1", "data.low_res_size and"),
    "train-shrink-negative": ("train --out {out} data.shrink_epochs=-1", "data.shrink_size and"),
    # ---- train: recipes, folders, checkpoints, data
    "train-recipe-unknown": ("train --out {out} --recipe cifar100", "unknown recipe 'cifar100'"),
    "train-recipe-missing": ("train --out {out} --recipe {folder}/missing.toml", "missing.toml not found"),
    "train-recipe-bad-toml": ("train --out {out} --recipe {folder}/bad.toml", "invalid TOML"),
    "train-recipe-bad-value": ("train --out {out} --recipe {folder}/negative.toml", "optim.epochs=0"),
    "train-out-is-file": ("train --out {img}", "is a file; give a folder"),
    "train-resume-no-out": ("train --resume", "--resume needs --out RUN_DIR"),
    "train-resume-empty": ("train --resume --out {folder}/empty", "--resume: no checkpoint at"),
    "train-init-and-resume": ("train --init {tiny} --resume --out {out}", "give one of them"),
    "train-holds-run": ("train --out {folder}/run --data {cifar_images} data.batch_size=2", "already holds a run"),
    "train-init-missing": ("train --init {folder}/missing.pt --out {out}", "missing.pt not found"),
    "train-init-text": ("train --init {folder}/text.pt --out {out}", "is not a PyTorch checkpoint"),
    "train-init-no-pipeline": ("train --init {folder}/nopipe.pt --data {folder}/prepared --out {out}",
                               "stores no input pipeline"),
    "train-init-shape": ("train --init {tiny} --data {folder}/prepared --out {out} model.width=0.5",
                         "a fine-tune keeps the init's network"),
    "train-init-crops": ("train --init {tiny} --data {folder}/prepared --out {out} train.eval_crops=4",
                         "train.eval_crops=4"),
    "train-init-wrong-classes": ("train --init {tiny} --data {folder}/prepared --out {out} model.num_classes=5",
                                 "model.num_classes=5 but the training data"),
    "train-init-no-data": ("train --init {tiny} --out {out}", "needs --data DIR"),
    "train-data-missing": ("train --out {out} --data {folder}/missing", "missing: no such file or folder"),
    "train-data-empty": ("train --out {out} --data {folder}/empty", "not a recognised CIFAR-10 layout"),
    "train-cifar-other-classes": ("train --out {out} --data {folder}/cifar-other", "do not match the CIFAR-10"),
    "train-cifar-no-images": ("train --out {out} --data {folder}/cifar-noimages", "no readable"),
    "train-cifar-bad-batches": ("train --out {out} --data {folder}/cifar-10-batches-py", "not a CIFAR-10 python"),
    "train-cifar-missing-batches": ("train --out {out} --data {folder}/part.tar", "missing data_batch_2"),
    "train-cifar-bad-labels": ("train --out {out} --data {folder}/batches-labels/cifar-10-batches-py",
                               "labels do not match the images"),
    "train-cifar-cut-tar": ("train --out {out} --data {folder}/cut.tar", "cannot read the archive"),
    "train-cifar-cut-folder-tar": ("train --out {out} --data {folder}/cutfolder.tar", "cannot read the archive"),
    "train-cifar-fake-tar": ("train --out {out} --data {folder}/fake/cifar-10-python.tar.gz",
                             "not a recognised CIFAR-10 layout"),
    "train-cifar-bad-cache": ("train --out {out} --data {folder}/text.pt", "not a readable alexnet CIFAR-10 cache"),
    "train-imagenet-empty": ("train --out {out} --recipe imagenet --data {folder}/empty", "no ImageNet layout"),
    "train-imagenet-file": ("train --out {out} --recipe imagenet --data {img}", "no such folder"),
    "train-imagenet-not-prepared": ("train --out {out} --recipe imagenet --data {folder}/noprep",
                                    "is not completely prepared"),
    "train-imagenet-resize": ("train --out {out} --recipe imagenet --data {folder}/prepared data.resize=squash",
                              "was prepared with resize center"),
    "train-imagenet-no-val": ("train --out {out} --recipe imagenet --data {folder}/noval", "has no val split"),
    "train-imagenet-classes": ("train --out {out} --recipe imagenet --data {folder}/prepared model.num_classes=7",
                               "model.num_classes=7 but the training data"),
    "train-imagenet-batch": ("train --out {out} --recipe imagenet --data {folder}/prepared data.batch_size=64",
                             "data.batch_size=64 is larger than the 6"),
    "train-imagenet-no-data": ("train --out {out} --recipe imagenet", "data.dataset=imagenet needs --data DIR"),
    "train-imagenet-bad-index": ("train --out {out} --recipe imagenet --data {folder}/badindex",
                                 "not a readable shard index"),
    "train-imagenet-odd-index": ("train --out {out} --recipe imagenet --data {folder}/oddindex",
                                 "inconsistent shard index"),
    "train-imagenet-no-shards": ("train --out {out} --recipe imagenet --data {folder}/noshards", "no shards"),
    "train-imagenet-val-tar": ("train --out {out} --recipe imagenet --data {folder}/faketars",
                               "not a readable uncompressed tar"),
    "train-imagenet-flat-val": ("train --out {out} --recipe imagenet --data {folder}/flatval",
                                "flat validation images need the labels"),
    "train-imagenet-bad-devkit": ("train --out {out} --recipe imagenet --data {folder}/baddevkit",
                                  "not a readable ILSVRC-2012 devkit"),
    "train-imagenet-loose-files": ("train --out {out} --recipe imagenet --data {folder}/loosetrain",
                                   "neither class folders (train/<class>/) nor per-class tars"),
    # ---- eval
    "eval-missing": ("eval --checkpoint {folder}/missing.pt", "missing.pt not found"),
    "eval-folder": ("eval --checkpoint {folder}/empty", "is a folder; pass the .pt file"),
    "predict-run-folder": ("predict --checkpoint {folder}/run {img}", "run/checkpoints/last.pt"),
    "eval-text-pt": ("eval --checkpoint {folder}/text.pt", "is not a PyTorch checkpoint (it starts with bytes"),
    "eval-empty-file": ("eval --checkpoint {folder}/zero.pt", "starts with bytes none"),
    "eval-truncated": ("eval --checkpoint {folder}/trunc.pt", "is unreadable or truncated"),
    "eval-no-model": ("eval --checkpoint {folder}/nomodel.pt", "no 'model' entry"),
    "eval-future": ("eval --checkpoint {folder}/future.pt", "has format 'alexnet-checkpoint-v99'"),
    "eval-unsafe": ("eval --checkpoint {folder}/unsafe.pt", "needs arbitrary unpickling"),
    "eval-wrong-shape": ("eval --checkpoint {folder}/wrongshape.pt", "does not fit the requested model: fc8.weight"),
    "eval-missing-key": ("eval --checkpoint {folder}/missingkey.pt", "does not fit the requested model"),
    "eval-bad-stored-config": ("eval --checkpoint {folder}/badconfig.pt", "optim.epochs=0: must be at least 1"),
    "eval-override": ("eval --checkpoint {tiny} data.eval_batch_size=0", "data.eval_batch_size=0"),
    "eval-ensemble-text": ("eval --checkpoint {tiny} --ensemble {folder}/text.pt", "is not a PyTorch checkpoint"),
    "eval-no-data": ("eval --checkpoint {tiny}", "data.dataset=imagenet needs --data DIR"),
    "eval-data-missing": ("eval --checkpoint {tiny} --data {folder}/missing", "missing: no such folder"),
    "eval-crops-choice": ("eval --checkpoint {tiny} --crops 3", "invalid choice: 3"),
    "eval-crops-whole": ("eval --checkpoint {tiny} --data {folder}/prepared --crops 4", "--crops 4 for"),
    "eval-fewer-classes": ("eval --checkpoint {tiny} --data {folder}/twoclasses", "has 3 classes but the dataset"),
    "eval-other-classes": ("eval --checkpoint {tiny} --data {folder}/otherclasses", "learned other classes"),
    "eval-ensemble-input": ("eval --checkpoint {tiny} --ensemble {folder}/other.pt --data {folder}/prepared",
                            "was trained on other inputs than the first network"),
    "eval-damaged-shard": ("eval --checkpoint {tiny} --data {folder}/shortshard", "re-run alexnet prepare"),
    # ---- predict, explain, retrieve, serve
    "predict-topk": ("predict --checkpoint {tiny} {img} --topk 0", "--topk must be at least 1"),
    "predict-batch": ("predict --checkpoint {tiny} {img} --batch-size 0", "--batch-size must be at least 1"),
    "predict-device": ("predict --checkpoint {tiny} {img} --device banana", "--device banana"),
    "predict-crops": ("predict --checkpoint {tiny} {img} --crops 4", "--crops 4 for"),
    "predict-empty-folder": ("predict --checkpoint {tiny} {folder}/empty", "no image files in this folder"),
    "predict-no-images": ("predict --checkpoint {tiny} {folder}/notimg", "no image files in this folder"),
    "predict-text-pt": ("predict --checkpoint {folder}/text.pt {img}", "is not a PyTorch checkpoint"),
    "predict-no-pipeline": ("predict --checkpoint {folder}/nopipe.pt {img}", "stores no input pipeline"),
    "explain-window": ("explain --checkpoint {tiny} {img} --window -1 --out {out}", "--window -1"),
    "explain-stride": ("explain --checkpoint {tiny} {img} --stride -1 --out {out}", "--stride -1"),
    "explain-batch": ("explain --checkpoint {tiny} {img} --batch-size 0 --out {out}", "--batch-size 0"),
    "explain-window-large": ("explain --checkpoint {tiny} {img} --method occlusion --window 1000 --out {out}",
                             "--window 1000 must be between 1"),
    "explain-class": ("explain --checkpoint {tiny} {img} --class zebra --out {out}", "--class zebra"),
    "explain-out-file": ("explain --checkpoint {tiny} {img} --out {img}", "is a file; give a folder"),
    "explain-only-out": ("explain --checkpoint {tiny} {folder}/maps --out {folder}/maps", "outside --out"),
    "explain-empty": ("explain --checkpoint {tiny} {folder}/empty --out {out}", "no image files"),
    "retrieve-k": ("retrieve --checkpoint {tiny} --gallery {folder}/photos {img} --k 0", "--k must be at least 1"),
    "retrieve-gallery-missing": ("retrieve --checkpoint {tiny} --gallery {folder}/missing {img}", "no such folder"),
    "retrieve-gallery-empty": ("retrieve --checkpoint {tiny} --gallery {folder}/empty {img}", "no image files"),
    "retrieve-gallery-unreadable": ("retrieve --checkpoint {tiny} --gallery {folder}/broken {img}",
                                    "none of its image files could be read"),
    "retrieve-batch": ("retrieve --checkpoint {tiny} --gallery {folder}/photos {img} --batch-size 0",
                       "--batch-size must be at least 1"),
    "serve-threads": ("serve --checkpoint {tiny} --threads -2", "--threads -2: must be at least 1"),
    "serve-max-batch": ("serve --checkpoint {tiny} --max-batch 0", "--max-batch must be positive"),
    "serve-timeout": ("serve --checkpoint {tiny} --timeout 0", "--timeout must be positive"),
    "serve-text-pt": ("serve --checkpoint {folder}/text.pt", "is not a PyTorch checkpoint"),
    "serve-busy-port": ("serve --checkpoint {tiny} --port {busy}", "(try another --port"),
    # ---- export, import
    "export-out-folder": ("export --checkpoint {tiny} --out {folder}/empty", "is a folder; give a file"),
    "export-quantize-alone": ("export --checkpoint {tiny} --quantize int8 --out {out}", "go together"),
    "export-quantize-format": ("export --checkpoint {tiny} --quantize int8 --calibration {folder}/photos "
                               "--out {out}", "--quantize int8 writes ONNX"),
    "export-calibration-empty": ("export --checkpoint {tiny} --format onnx --quantize int8 --calibration "
                                 "{folder}/empty --out {out}", "no image files in this folder"),
    "export-calibration-broken": ("export --checkpoint {tiny} --format onnx --quantize int8 --calibration "
                                  "{folder}/broken --out {out}", "no readable images"),
    "export-calibration-no-pipeline": ("export --checkpoint {folder}/nopipe.pt --format onnx --quantize int8 "
                                       "--calibration {folder}/photos --out {out}", "stores no input pipeline"),
    "export-format": ("export --checkpoint {tiny} --format png --out {out}", "invalid choice: 'png'"),
    "export-text-pt": ("export --checkpoint {folder}/text.pt --out {out}", "is not a PyTorch checkpoint"),
    "import-missing": ("import torchvision {folder}/missing.pth --out {out}", "not found; pass the weight file"),
    "import-out-folder": ("import torchvision {tiny} --out {folder}/empty", "is a folder; give a file"),
    "import-tv-mean": ("import torchvision {folder}/tv-nofc8.pth --mean {folder}/mean.npy --out {out}",
                       "torchvision's weights use a fixed normalisation"),
    "import-tv-text": ("import torchvision {folder}/text.pt --out {out}", "is not a readable torch.save file"),
    "import-tv-checkpoint": ("import torchvision {tiny} --out {out}", "is not a plain state_dict"),
    "import-tv-no-fc8": ("import torchvision {folder}/tv-nofc8.pth --out {out}", "has no classifier.6.weight"),
    "import-tv-missing-key": ("import torchvision {folder}/tv-onlyfc8.pth --out {out}", "has no features.0.weight"),
    "import-tv-shape": ("import torchvision {folder}/tv-shape.pth --out {out}", "features.0.weight is"),
    "import-caffe-text": ("import caffe {folder}/text.pt --out {out}", "is not a Caffe NetParameter"),
    "import-caffe-torch": ("import caffe {tiny} --out {out}", "is a PyTorch file, not a .caffemodel"),
    "import-caffe-no-conv1": ("import caffe {folder}/noconv1.caffemodel --out {out}", "has no conv1 with weights"),
    "import-caffe-blob-size": ("import caffe {folder}/blobsize.caffemodel --out {out}", "holds 4356 numbers"),
    "import-caffe-conv1": ("import caffe {folder}/conv1.caffemodel --out {out}", "expected Kx3x11x11"),
    "import-caffe-conv2": ("import caffe {folder}/conv2.caffemodel --out {out}", "conv2 takes 5 input channels"),
    "import-caffe-fc6": ("import caffe {folder}/fc6.caffemodel --out {out}", "fc6 weight is"),
    "import-caffe-mean-missing": ("import caffe {folder}/good.caffemodel --mean {folder}/missing.npy --out {out}",
                                  "--mean {folder}/missing.npy not found"),
    "import-caffe-mean-shape": ("import caffe {folder}/good.caffemodel --mean {folder}/small-mean.npy --out {out}",
                                "expected 3x256x256"),
    "import-caffe-mean-npy": ("import caffe {folder}/good.caffemodel --mean {folder}/text.npy --out {out}",
                              "is not a readable .npy array"),
    "import-caffe-mean-proto": ("import caffe {folder}/good.caffemodel --mean {folder}/text.binaryproto "
                                "--out {out}", "is not a Caffe BlobProto mean"),
    # ---- prepare
    "prepare-needs-out": ("prepare imagenet --src {folder}/photos", "needs --src PATH"),
    "prepare-workers": ("prepare imagenet --src {folder}/imagefolder --out {out} --workers 0",
                        "--workers must be at least 1"),
    "prepare-src-missing": ("prepare imagenet --src {folder}/missing --out {out}", "missing: no such folder"),
    "prepare-src-empty": ("prepare imagenet --src {folder}/empty --out {out}", "no ImageNet layout found"),
    "prepare-src-file": ("prepare imagenet --src {img} --out {out}", "is a file, pass the folder"),
    "prepare-out-is-src": ("prepare imagenet --src {folder}/imagefolder --out {folder}/imagefolder",
                           "the output folder is the source folder"),
    "prepare-out-file": ("prepare imagenet --src {folder}/imagefolder --out {img}", "is a file; give a folder"),
    "prepare-val-loose": ("prepare imagenet --src {folder}/looseval --out {out}", "neither class folders (val"),
    "prepare-train-tar": ("prepare imagenet --src {folder}/emptytar --out {out}", "holds no per-class tars"),
    "prepare-cifar-missing": ("prepare cifar10 --src {folder}/missing", "no such file or folder"),
    "prepare-cifar-folder": ("prepare cifar10 --src {folder}/notimg", "not a recognised CIFAR-10 layout"),
    "prepare-cifar-text": ("prepare cifar10 --src {folder}/text.pt", "not a readable alexnet CIFAR-10 cache"),
    "prepare-cifar-download": ("prepare cifar10", "downloading"),
    # ---- figures, report, figure1, ablate, bench
    "figures-gallery-limit": ("figures --checkpoint {tiny} --gallery-limit 0 --out {out}", "--gallery-limit"),
    "figures-images-missing": ("figures --checkpoint {tiny} --images {folder}/missing --out {out}", "not a folder"),
    "figures-units": ("figures --checkpoint {tiny} --units conv9 --out {out}", "conv9 is not a conv layer"),
    "figures-device": ("figures --checkpoint {tiny} --device banana --out {out}", "device 'banana' is not one"),
    "figures-empty": ("figures --checkpoint {tiny} --images {folder}/empty --gallery {folder}/empty --out {out}",
                      "no image files (.jpg, .png, ...) in it"),
    "figures-unreadable": ("figures --checkpoint {tiny} --images {folder}/broken --gallery {folder}/photos "
                           "--out {out}", "convert it to JPEG or PNG"),
    "figures-same-gallery": ("figures --checkpoint {tiny} --images {folder}/maps --gallery {folder}/maps "
                             "--out {out}", "the gallery holds only the query images"),
    "figures-data-classes": ("figures --checkpoint {tiny} --data {folder}/twoclasses --out {out}",
                             "has 3 classes but the dataset has 2"),
    "figures-classes": ("figures --checkpoint {folder}/twonames.pt --images {folder}/photos --gallery {folder}/maps "
                        "--out {out}", "pass --data with the dataset it was trained on"),
    "figures-no-classes": ("figures --checkpoint {folder}/noclasses.pt --images {folder}/photos --gallery "
                           "{folder}/maps --out {out}", "data.dataset=imagenet needs --data DIR"),
    "figures-out-file": ("figures --checkpoint {tiny} --out {img}", "is a file; give a folder"),
    "report-missing": ("report {folder}/missing", "no such run folder"),
    "report-empty": ("report {folder}/empty", "metrics.jsonl not found"),
    "report-bad-metrics": ("report {folder}/badmetrics --out {out}", "metrics.jsonl:2: not a JSON object"),
    "report-bad-summary": ("report {folder}/badsummary --out {out}", "summary.json: not valid JSON"),
    "report-list-summary": ("report {folder}/listsummary --out {out}", "expected a JSON object, found list"),
    "report-out-file": ("report {folder}/run --out {img}", "is a file; give a folder"),
    "figure1-epochs": ("figure1 --epochs 0 --out {out}", "--epochs must be at least 1"),
    "figure1-seeds-words": ("figure1 --seeds a,b --out {out}", "--seeds must be comma-separated integers"),
    "figure1-seeds-twice": ("figure1 --seeds 0,0 --out {out}", "distinct non-negative"),
    "figure1-lrs-zero": ("figure1 --lrs 0 --out {out}", "--lrs needs at least one positive"),
    "figure1-lrs-words": ("figure1 --lrs x --out {out}", "--lrs must be comma-separated numbers"),
    "figure1-lr-pairs": ("figure1 --lr relu=x --out {out}", "--lr must be ACTIVATION=RATE pairs"),
    "figure1-sweep": ("figure1 --sweep-epochs 5 --epochs 2 --out {out}", "--sweep-epochs 5 is more than"),
    "figure1-limit": ("figure1 --limit -1 --out {out}", "--limit must not be negative"),
    "figure1-threads": ("figure1 --threads -1 --out {out}", "--threads -1"),
    "figure1-batch": ("figure1 --batch-size 600 --limit 100 --epochs 1 --sweep-epochs 1 --lr relu=0.01,tanh=0.01 "
                      "--seeds 0 --data {cifar_images} --out {out}", "--batch-size 600 is larger than the"),
    "figure1-out-file": ("figure1 --out {img}", "is a file; give a folder"),
    "ablate-study": ("ablate --study nope --out {out}", "unknown study 'nope'"),
    "ablate-seeds": ("ablate --seeds 0 --out {out}", "--seeds must be at least 1"),
    "ablate-epochs": ("ablate --epochs 0 --out {out}", "--epochs must be at least 1"),
    "ablate-limit": ("ablate --limit -1 --out {out}", "--limit must not be negative"),
    "ablate-recipe": ("ablate --recipe nope --out {out}", "unknown recipe 'nope'"),
    "ablate-clash": ("ablate --study lrn --out {out} model.lrn=false", "override model.lrn is what the"),
    "ablate-override": ("ablate --out {out} data.batch_size=0", "data.batch_size=0"),
    "ablate-other-run": ("ablate --study lrn --seeds 1 --out {folder}/ablation", "holds a"),
    "ablate-out-file": ("ablate --out {img}", "is a file; give a folder"),
    "bench-overrides": ("bench model seed=1", "bench model takes no key=value overrides"),
    "bench-model-src": ("bench model --src {folder}", "--src is for bench data, not bench model"),
    "bench-train-batch-size": ("bench train --batch-size 3", "--batch-size is for bench model, not bench train"),
    "bench-data-steps": ("bench data --src {folder} --steps 3", "--steps is for bench model and bench train"),
    "bench-train-epoch-past": ("bench train --recipe cifar10 --epoch 1000", "--epoch 1000: the recipe trains epochs 0"),
    "bench-data-no-src": ("bench data", "bench data needs --src DIR"),
    "bench-data-missing": ("bench data --src {folder}/missing", "no such folder; pass --src DIR"),
    "bench-data-empty": ("bench data --src {folder}/notimg", "holds no image files"),
    "bench-model-batch": ("bench model --batch-size 0", "bench model needs --batch-size"),
    "bench-model-device": ("bench model --device banana", "invalid choice: 'banana'"),
    "bench-train-steps": ("bench train --steps 0", "bench train needs --steps at least 1"),
    "bench-train-recipe": ("bench train --recipe nope", "unknown recipe 'nope'"),
    "bench-train-key": ("bench train optim.epoch=1", "did you mean 'optim.epochs'?"),
    # ---- the command line itself
    "no-command": ("", "the following arguments are required: command"),
    "unknown-command": ("tran", "invalid choice: 'tran'"),
    "stray-argument": ("report {folder}/run extra", "unrecognized arguments: extra"),
}
# Rows that need more than a command line: environment variables, or another download address.
ROWS.update({
    "train-torchrun-no-out": ("train optim.epochs=1", "under torchrun pass --out RUN_DIR",
                              {"env": {"TORCHELASTIC_RESTART_COUNT": "0"}}),
    "prepare-cifar-cache-unwritable": ("prepare cifar10", "cannot create the data cache",
                                       {"env": {"ALEXNET_DATA": "{img}/cache"}}),
    "prepare-cifar-download-damaged": ("prepare cifar10", "has md5", {"url": "file://{folder}/text.pt"}),
    "prepare-out-unwritable": ("prepare imagenet --src {folder}/imagefolder --out {img}/sub",
                               "cannot write the output folder"),
    "eval-shard-crc": ("eval --checkpoint {tiny} --data {folder}/crcshard", "fails its crc32 check"),
    "eval-shard-undecodable": ("eval --checkpoint {tiny} --data {folder}/junkshard", "does not decode"),
    "eval-shard-raw-length": ("eval --checkpoint {tiny} --data {folder}/rawshard", "raw record for global index"),
    "eval-shard-missing": ("eval --checkpoint {tiny} --data {folder}/nodatashard", "cannot open the shard"),
    "eval-shards-mixed": ("eval --checkpoint {tiny} --data {folder}/mixedshards", "shards mix the formats"),
    "import-tv-extra-key": ("import torchvision {folder}/tv-extra.pth --out {out}", "which torchvision's AlexNet"),
    "predict-onnx-no-info": ("predict --checkpoint {folder}/noinfo.onnx {img}", "carries no alexnet export"),
    "predict-onnx-no-sidecar": ("predict --checkpoint {folder}/nosidecar.onnx {img}", "which is missing"),
    "predict-onnx-no-pipeline": ("predict --checkpoint {folder}/nopre.onnx {img}", "carries no preprocessing"),
    "predict-onnx-bad-graph": ("predict --checkpoint {folder}/badgraph.onnx {img}", "onnxruntime cannot load"),
    "train-resume-towers": ("train --resume --out {folder}/run --data {folder}/prepared data.batch_size=2 "
                            "model.tower_devices=cpu,cpu",
                            "continue it with a empty model.tower_devices"),
    "train-resume-classes": ("train --resume --out {folder}/run --data {folder}/otherclasses data.batch_size=2",
                             "learned other classes than the dataset holds"),
    "train-imagenet-devkit-ids": ("train --out {out} --recipe imagenet --data {folder}/devkitids",
                                  "uses ILSVRC2012_IDs [99]"),
    "figures-empty-split": ("figures --checkpoint {folder}/cifar.pt --data {folder}/emptybatches --out {out}",
                            "the dataset's val split is empty"),
    "eval-onnx-ensemble": ("eval --checkpoint {folder}/ident.onnx --ensemble {tiny}", "--ensemble takes checkpoints"),
    "eval-onnx-missing": ("eval --checkpoint {folder}/missing.onnx", "missing.onnx: no such file"),
    "eval-onnx-fewer-classes": ("eval --checkpoint {folder}/ident.onnx --data {folder}/twoclasses",
                                "has 3 classes but the dataset has 2"),
    "eval-onnx-other-classes": ("eval --checkpoint {folder}/ident.onnx --data {folder}/otherclasses",
                                "names other classes than the dataset"),
    "retrieve-onnx": ("retrieve --checkpoint {folder}/ident.onnx --gallery {folder}/photos {img}",
                      "gives no fc7 output"),
})
KNOWN: dict[str, str] = {}  # rows that still end in a traceback: none
ROWS["predict-onnx-text"] = ("predict --checkpoint {folder}/fake.onnx {img}", "fake.onnx")
ROWS["explain-onnx"] = ("explain --checkpoint {folder}/fake.onnx {img} --out {out}", "fake.onnx")
ROWS["serve-onnx"] = ("serve --checkpoint {folder}/fake.onnx", "fake.onnx")
# Found by trying mistakes a new user makes: files of another program or kind, values out of any sane range.
ROWS.update({
    "eval-model-not-dict": ("eval --checkpoint {folder}/hunt/modelstr.pt", "its 'model' entry is not what alexnet"),
    "eval-config-not-dict": ("eval --checkpoint {folder}/hunt/configstr.pt", "its 'config' entry is not what"),
    "predict-classes-strings": ("predict --checkpoint {folder}/hunt/classesstr.pt {img}", "its 'classes' entry"),
    "predict-pipeline-string": ("predict --checkpoint {folder}/hunt/pipestr.pt {img}", "its 'pipeline' entry"),
    "predict-classes-count": ("predict --checkpoint {folder}/twonames.pt {img}", "names 2 classes but its network"),
    "export-classes-count": ("export --checkpoint {folder}/twonames.pt --format onnx --out {out}.onnx",
                             "names 2 classes but its network has 3 outputs"),
    "eval-no-format": ("eval --checkpoint {folder}/hunt/noformat.pt", "no 'format' entry: another program"),
    "eval-torchvision-weights": ("eval --checkpoint {folder}/tv-onlyfc8.pth", "run alexnet import torchvision"),
    "predict-pickled-model": ("predict --checkpoint {folder}/hunt/module.pt {img}",
                              "it holds a pickled torch.nn.modules.linear.Linear); save the weights alone"),
    "import-tv-pickled-model": ("import torchvision {folder}/hunt/module.pt --out {out}.pt",
                                "it holds a pickled torch.nn.modules.linear.Linear"),
    "train-recipe-binary": ("train --out {out} --recipe {img}", "is not TOML text (not UTF-8"),
    "bench-train-recipe-binary": ("bench train --recipe {folder}/hunt/latin1.toml", "is not TOML text"),
    "train-seed-huge": ("train --out {out} seed=99999999999999999999999", "seed=99999999999999999999999: must be"),
    "train-epochs-huge": ("train --out {out} optim.epochs=99999999999999999999", "and at most 100,000"),
    "ablate-epochs-huge": ("ablate --epochs 99999999999999999999 --out {out}", "optim.epochs=99999999999999999999"),
    "train-width-huge": ("train --out {out} model.width=1000", "model.width=1000.0: must be at most 16"),
    "train-input-size-huge": ("train --out {out} model.input_size=100000", "model.input_size=100000: must be"),
    "train-threads-huge": ("train --out {out} train.threads=100000", "train.threads=100000: must be at least 0 and"),
    "serve-threads-huge": ("serve --checkpoint {tiny} --threads 100000", "--threads 100000: must be at least 1 and"),
    "figure1-threads-huge": ("figure1 --threads 100000 --out {out}", "--threads 100000: must be at least 0 and"),
    "serve-timeout-inf": ("serve --checkpoint {tiny} --timeout inf", "--timeout inf: must be a finite number"),
    "serve-upload-inf": ("serve --checkpoint {tiny} --max-upload-mb inf", "--max-upload-mb inf: must be a finite"),
    "serve-wait-inf": ("serve --checkpoint {tiny} --max-wait-ms inf", "--max-wait-ms inf"),
    "export-out-under-file": ("export --checkpoint {tiny} --format onnx --out {img}/a.onnx", "is a file, not a folder"),
    "import-out-under-file": ("import torchvision {folder}/tv-nofc8.pth --out {img}/a.pt", "is a file, not a folder"),
    "export-out-is-checkpoint": ("export --checkpoint {tiny} --format torchscript --out {tiny}",
                                 "is the file it is made from"),
    "import-out-is-source": ("import torchvision {folder}/tv-nofc8.pth --out {folder}/tv-nofc8.pth",
                             "is the file it is made from"),
    "export-onnx-named-pt": ("export --checkpoint {tiny} --format onnx --out {out}.pt", "give a .onnx name"),
    "export-over-image": ("export --checkpoint {tiny} --format safetensors --out {img}", "a .jpg name for this file"),
    "import-out-onnx": ("import torchvision {folder}/tv-nofc8.pth --out {out}.onnx", "give a .pt or .pth name"),
    "import-caffe-mean-nan": ("import caffe {folder}/good.caffemodel --mean {folder}/hunt/nan-mean.npy --out {out}",
                              "holds nan or infinite values"),
    "prepare-workers-negative": ("prepare imagenet --src {folder}/imagefolder --out {out} --workers -2",
                                 "--workers must be at least 1, got -2"),
    "prepare-cifar-out": ("prepare cifar10 --src {folder}/cifar_images --out {out}", "is for prepare imagenet"),
    "prepare-cifar-workers": ("prepare cifar10 --src {folder}/cifar_images --workers 0", "--workers 0 is for"),
    "bench-data-seconds-nan": ("bench data --src {folder}/photos --seconds nan", "--seconds positive and finite"),
    "bench-data-unreadable": ("bench data --src {folder}/broken", "b.jpg: not an image Pillow can read"),
    "figure1-lrs-inf": ("figure1 --lrs inf --out {out}", "each finite; got 'inf'"),
    "figure1-lr-inf": ("figure1 --lr relu=inf --out {out}", "got 'relu=inf'"),
    "ablate-seeds-huge": ("ablate --seeds 100000000 --out {out}", "and at most 100"),
    "report-empty-metrics": ("report {folder}/hunt/emptymetrics --out {out}", "holds no epoch yet"),
    "report-binary-metrics": ("report {folder}/hunt/binmetrics --out {out}", "metrics.jsonl: not UTF-8 text"),
    "explain-window-gradcam": ("explain --checkpoint {tiny} {img} --window 5 --out {out}",
                               "--window 5 sets occlusion's square and does nothing with --method gradcam"),
    "explain-stride-gradcam": ("explain --checkpoint {tiny} {img} --stride 5 --out {out}", "--stride 5 sets"),
    "train-world-size-word": ("train --out {out}", "WORLD_SIZE='two' is not a number torchrun sets",
                              {"env": {"WORLD_SIZE": "two"}}),
    "eval-world-size-no-rank": ("eval --checkpoint {tiny} --data {folder}/prepared",
                                "WORLD_SIZE is set but RANK is not", {"env": {"WORLD_SIZE": "2"}}),
    "train-torchrun-restart-word": ("train --out {out}", "TORCHELASTIC_RESTART_COUNT='x'",
                                    {"env": {"TORCHELASTIC_RESTART_COUNT": "x"}}),
    "prepare-cifar-cache-is-file": ("prepare cifar10 --src {folder}/cifar_images", "is a file, not a folder; set "
                                    "ALEXNET_DATA", {"env": {"ALEXNET_DATA": "{img}"}}),
})
# Found by trying folders shaped like a user's: archives, unsorted photos, one class, val/ named otherwise, --out
# inside the source or over another source's preparation.
ROWS.update({
    "prepare-src-archive": ("prepare imagenet --src {folder}/part.tar --out {out}", "is an archive; extract it"),
    "train-data-archive": ("train --recipe imagenet --data {folder}/part.tar --out {out}", "is an archive; extract"),
    "eval-data-archive": ("eval --checkpoint {tiny} --data {folder}/part.tar", "is an archive; extract it"),
    "train-own-photos-cifar": ("train --data {folder}/imagefolder --out {out}", "train them with --recipe imagenet"),
    "prepare-unsorted-photos": ("prepare imagenet --src {folder}/photos --out {out}",
                                "holds image files but no class folders"),
    "train-unsorted-photos": ("train --recipe imagenet --data {folder}/photos --out {out}",
                              "put each class's images in its own folder"),
    "train-data-is-train-split": ("train --recipe imagenet --data {folder}/imagefolder/train --out {out}",
                                  "is the train/ split itself (it holds n0/, n1/, n2/); pass the folder that holds"),
    "prepare-bare-class-folders": ("prepare imagenet --src {folder}/hunt/sorted --out {out}",
                                   "holds class folders (cat/, dog/) but no train/ or val/ split: put them in"),
    "train-one-class": ("train --recipe imagenet --data {folder}/hunt/oneclass --out {out} data.batch_size=1",
                        "has 1 class (only): a classifier needs at least two"),
    "train-val-other-names": ("train --recipe imagenet --data {folder}/hunt/valnames --out {out} data.batch_size=1",
                              "has no val images: all 2 were skipped, e.g. val/A/0.jpg: class A is not among"),
    "prepare-out-in-train": ("prepare imagenet --src {folder}/imagefolder --out {folder}/imagefolder/train/prep",
                             "is inside the source's train folder"),
    "prepare-out-other-source": ("prepare imagenet --src {folder}/hunt/valnames --out {folder}/prepared",
                                 "already holds the preparation of"),
    "prepare-train-tar-gzipped": ("prepare imagenet --src {folder}/hunt/gztar --out {out}",
                                  "(gzip-compressed: decompress it (gunzip) to the plain tar)"),
    "prepare-train-tar-of-images": ("prepare imagenet --src {folder}/hunt/imgtar --out {out}",
                                    "it holds images (cat/0.jpg): extract it into train/"),
    "prepare-kaggle-root": ("prepare imagenet --src {folder}/hunt/kaggle --out {out}",
                            "for Kaggle's ImageNet pass --src"),
    "eval-val-only-no-pipeline": ("eval --checkpoint {folder}/nopipe.pt --data {folder}/hunt/valonly",
                                  "the data has no train split, so no statistics"),
})
if not torch.backends.mps.is_available():  # a Mac's GPU: not on this machine
    ROWS["predict-no-mps"] = ("predict --checkpoint {tiny} {img} --device mps", "--device mps: not a usable device")
    ROWS["train-no-mps"] = ("train --out {out} train.device=mps", "device 'mps' is not usable here")
    ROWS["figures-no-mps"] = ("figures --checkpoint {tiny} --device mps --out {out}", "device 'mps' is not usable")
if not torch.cuda.is_available():  # only where no GPU is visible
    ROWS["train-no-gpu"] = ("train --out {out} train.device=cuda", "no CUDA GPU is visible")
    ROWS["predict-no-gpu"] = ("predict --checkpoint {tiny} {img} --device cuda", "--device cuda")
else:  # only where one is
    ROWS["train-gpu-index"] = ("train --out {out} train.device=cuda:99", "device cuda:99 but this machine shows")


def image(path, size=(40, 30), colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def write(path, data: bytes | str = b""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def checkpoints(f):
    """The small checkpoint and its damaged or refused variants."""
    imagenet = {"data": {"dataset": "imagenet"}}  # eval and figures then read a prepared folder
    tiny = tiny_checkpoint(f / "tiny.pt", width=1 / 16, config=imagenet)  # a 1 MB file, loaded in milliseconds
    tiny_checkpoint(f / "other.pt", seed=1, width=1 / 16, mean=100.0, config=imagenet)
    recipe_checkpoint(f / "cifar.pt", "cifar10", ["model.width=0.0625"])  # a CIFAR-10 network and its input
    ckpt = torch.load(tiny, weights_only=True)
    write(f / "text.pt", "hello\n")
    write(f / "zero.pt")
    write(f / "trunc.pt", tiny.read_bytes()[:4096])
    torch.save({"weights": {}}, f / "nomodel.pt")
    torch.save({**ckpt, "format": "alexnet-checkpoint-v99"}, f / "future.pt")
    torch.save({"model": {}, "args": argparse_namespace()}, f / "unsafe.pt")
    torch.save({**ckpt, "model": {**ckpt["model"], "fc8.weight": torch.zeros(5, 256)}}, f / "wrongshape.pt")
    torch.save({**ckpt, "model": {k: v for k, v in ckpt["model"].items() if k != "fc8.bias"}}, f / "missingkey.pt")
    torch.save({k: v for k, v in ckpt.items() if k != "pipeline"}, f / "nopipe.pt")
    config = {**ckpt.get("config", {}), "optim": {"epochs": 0}}
    torch.save({**ckpt, "config": config}, f / "badconfig.pt")
    write(f / "fake.onnx", "not onnx")
    torch.save({**ckpt, "classes": ckpt["classes"][:2]}, f / "twonames.pt")
    torch.save({k: v for k, v in ckpt.items() if k != "classes"}, f / "noclasses.pt")


def argparse_namespace():
    import argparse

    return argparse.Namespace(a=1)  # any object outside weights_only's allow-list


def torchvision_shaped() -> dict:
    """torchvision AlexNet's keys and shapes in a few bytes: each tensor one zero, expanded (torch.save keeps
    the one-element storage)."""
    from alexnet import AlexNet, ModelConfig

    with torch.device("meta"):
        own = AlexNet(ModelConfig(variant="torchvision", num_classes=3)).state_dict()
    from alexnet.use.pretrained import TORCHVISION_NAMES

    return {f"{old}.{kind}": torch.zeros(1).expand(own[f"{new}.{kind}"].shape)
            for old, new in TORCHVISION_NAMES.items() for kind in ("weight", "bias")}


def weights(f):
    """torchvision state_dicts and Caffe models, each wrong in one way, and mean files."""
    torch.save({"features.0.weight": torch.zeros(1)}, f / "tv-nofc8.pth")
    torch.save({"classifier.6.weight": torch.zeros(3, 4096)}, f / "tv-onlyfc8.pth")
    torch.save({**torchvision_shaped(), "classifier.7.weight": torch.zeros(1)}, f / "tv-extra.pth")
    torch.save({"classifier.6.weight": torch.zeros(3, 4096), "features.0.weight": torch.zeros(2, 3, 3, 3)},
               f / "tv-shape.pth")
    full = caffe_blobs()
    write_caffemodel(f / "good.caffemodel", full)
    # The others are refused before fc6 and fc7 are looked at (fc6's row: before fc7): a few numbers there.
    blobs = {**full, "fc6": (np.zeros((512, 1), np.float32), full["fc6"][1]),
             "fc7": (np.zeros((512, 1), np.float32), full["fc7"][1])}
    write_caffemodel(f / "noconv1.caffemodel", {k: v for k, v in blobs.items() if k != "conv1"})
    write_caffemodel(f / "blobsize.caffemodel", blobs, shape_of={("conv1", 4): (12, 3, 11, 12)})
    bad_conv1 = np.zeros((12, 3, 5, 5), np.float32)
    write_caffemodel(f / "conv1.caffemodel", {**blobs, "conv1": (bad_conv1, blobs["conv1"][1])})
    bad_conv2 = np.zeros((32, 5, 5, 5), np.float32)
    write_caffemodel(f / "conv2.caffemodel", {**blobs, "conv2": (bad_conv2, blobs["conv2"][1])})
    bad_fc6 = np.zeros((512, 100), np.float32)
    write_caffemodel(f / "fc6.caffemodel", {**blobs, "fc6": (bad_fc6, blobs["fc6"][1])})
    np.save(f / "small-mean.npy", np.zeros((3, 10, 10)))
    write(f / "text.npy", "not numpy")
    write(f / "text.binaryproto", b"\xff\xff\xff")


CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def photos(f):
    """Image folders good and bad, and CIFAR-10 sources in every wrong shape."""
    image(f / "img.jpg")
    (f / "empty").mkdir()
    write(f / "notimg" / "a.txt", "no image here")
    for k in range(2):
        image(f / "photos" / f"p{k}.png", colour=(40 * k, 90, 200))
    image(f / "maps" / "m.png")
    write(f / "broken" / "b.jpg", "not a jpeg")
    for split in ("train", "test"):
        for c, name in enumerate(CIFAR):
            image(f / "cifar_images" / split / name / "0.png", (32, 32), (c * 20, 50, 90))
        image(f / "cifar-other" / split / "zebra" / "0.png", (32, 32))
        for name in CIFAR:
            write(f / "cifar-noimages" / split / name / "0.png", "not a png")
    for k in range(1, 6):
        write(f / "cifar-10-batches-py" / f"data_batch_{k}", "not a pickle")
    write(f / "cifar-10-batches-py" / "test_batch", "not a pickle")
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}
    import pickle

    for name in (*[f"data_batch_{k}" for k in range(1, 6)], "test_batch"):
        write(f / "batches-labels" / "cifar-10-batches-py" / name, pickle.dumps(batch))
    empty = {b"data": np.zeros((0, 3072), np.uint8), b"labels": []}
    for name in (*[f"data_batch_{k}" for k in range(1, 6)], "test_batch"):
        write(f / "emptybatches" / "cifar-10-batches-py" / name, pickle.dumps(empty))
    write(f / "fake" / "cifar-10-python.tar.gz", "not a tarball")
    tar_of(f / "part.tar", {"cifar-10-batches-py/data_batch_1": b"x"})
    noise = np.random.default_rng(0).bytes(100_000)
    tar_of(f / "cut.tar", {"cifar-10-batches-py/data_batch_1": b"x", "cifar-10-batches-py/data_batch_2": noise})
    tar_of(f / "cutfolder.tar", {"train/cat/0.png": b"x", "train/cat/1.png": noise})
    for cut in ("cut.tar", "cutfolder.tar"):
        write(f / cut, (f / cut).read_bytes()[:50_000])
    write(f / "cache" / "cifar10.npz", "not a cache")


def tar_of(path, members: dict[str, bytes]):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def imagenet_sources(f):
    """ImageNet sources in wrong layouts, and one good ImageFolder (classes n0 n1 n2 as the tiny checkpoint's)."""
    jpeg = (f / "img.jpg").read_bytes()
    for split in ("train", "val"):
        for c in range(3):
            write(f / "imagefolder" / split / f"n{c}" / "0.jpg", jpeg)
            write(f / "imagefolder" / split / f"n{c}" / "1.jpg", jpeg)
    write(f / "faketars" / "ILSVRC2012_img_train.tar", "not a tar")
    write(f / "flatval" / "val" / "ILSVRC2012_val_00000001.JPEG", jpeg)
    write(f / "baddevkit" / "val" / "ILSVRC2012_val_00000001.JPEG", jpeg)
    write(f / "baddevkit" / "ILSVRC2012_devkit_t12.tar.gz", "not a devkit")
    from test_imagenet_prepare import devkit_files

    write(f / "devkitids" / "val" / "ILSVRC2012_val_00000001.JPEG", jpeg)
    for name, data in devkit_files().items():
        write(f / "devkitids" / name, b"99\n" if name.endswith(".txt") else data)
    write(f / "loosetrain" / "train" / "readme.txt", "no classes")
    write(f / "looseval" / "val" / "readme.txt", "no classes")
    tar_of(f / "emptytar" / "ILSVRC2012_img_train.tar", {"readme.txt": b"no class tars"})


def prepared(f):
    """The good ImageFolder prepared once, and copies of it each damaged in one way."""
    from alexnet.data.imagenet.prepare import prepare_imagenet

    good = f / "prepared"
    prepare_imagenet(f / "imagefolder", good, workers=1, progress=False)
    for name in ("noprep", "noval", "twoclasses", "otherclasses", "badindex", "oddindex", "noshards", "shortshard"):
        shutil.copytree(good, f / name)
    (f / "noprep" / "prepared.json").unlink()
    shutil.rmtree(f / "noval" / "val")
    write(f / "twoclasses" / "classes.tsv", "wnid\tname\nn0\tcat\nn1\tdog\n")
    write(f / "otherclasses" / "classes.tsv", "wnid\tname\nn0\tcat\nn1\tdog\nn7\tfish\n")
    for p in (f / "badindex" / "train").glob("*.npz"):
        write(p, "not an index")
    for p in (f / "oddindex" / "train").glob("*.npz"):
        np.savez(p, offsets=np.zeros(2), lengths=np.zeros(3), crc32=np.zeros(2), labels=np.zeros(2),
                 format=np.array("jpeg"))
    for p in (f / "noshards" / "train").glob("shard-*"):
        p.unlink()
    for p in (f / "shortshard" / "val").glob("shard-*"):
        if not p.name.endswith(".npz"):
            write(p, p.read_bytes()[:10])


def shards(f):
    """Prepared copies whose shards are damaged where only reading the records finds it."""
    import zlib

    good = f / "prepared"
    for name in ("crcshard", "junkshard", "rawshard", "nodatashard", "mixedshards"):
        shutil.copytree(good, f / name)
    data, index = f / "crcshard" / "val" / "shard-00000.bin", f / "crcshard" / "val" / "shard-00000.idx.npz"
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size, another checksum
    write(data, bytes(blob))
    keys = dict(np.load(index))
    junk = np.random.default_rng(0).bytes(int(keys["lengths"].sum()))
    write(f / "junkshard" / "val" / "shard-00000.bin", junk)
    offsets, lengths = keys["offsets"], keys["lengths"]
    crcs = [zlib.crc32(junk[o:o + n]) for o, n in zip(offsets.tolist(), lengths.tolist())]
    np.savez(f / "junkshard" / "val" / "shard-00000.idx.npz", **{**keys, "crc32": np.array(crcs, np.uint32)})
    np.savez(f / "rawshard" / "val" / "shard-00000.idx.npz", **{**keys, "format": np.array("raw")})
    (f / "nodatashard" / "val" / "shard-00000.bin").unlink()
    shutil.copy(good / "val" / "shard-00000.bin", f / "mixedshards" / "val" / "shard-00001.bin")
    np.savez(f / "mixedshards" / "val" / "shard-00001.idx.npz", **{**keys, "format": np.array("raw")})


def exports(f):
    """Tiny .onnx files that are not what `alexnet export` writes, each in one way."""
    import onnx
    from onnx import TensorProto, helper

    def model(path, info: dict | None, op: str = "Identity"):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 224, 224])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 224, 224])
        graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        if info is not None:
            helper.set_model_props(proto, {"alexnet": json.dumps(info)})
        onnx.save(proto, str(path))

    pre = {"kind": "imagenet", "size": 224, "stored": 256, "resize": "center", "mean_kind": "channel",
           "mean": [115.0, 115.0, 115.0], "std": None}
    info = {"model": {"num_classes": 3}, "classes": TINY_CLASSES, "preprocessing": pre}
    model(f / "noinfo.onnx", None)
    model(f / "nosidecar.onnx", {**info, "preprocessing": {**pre, "mean_kind": "image", "mean": "see the .json"}})
    model(f / "nopre.onnx", {**info, "preprocessing": None})
    model(f / "badgraph.onnx", info, op="NoSuchOperator")
    model(f / "ident.onnx", info)


def runs(f):
    """Run folders: one that holds a run, damaged metrics and summaries, an ablation arm with another config."""
    write(f / "run" / "checkpoints" / "last.pt", (f / "tiny.pt").read_bytes())
    write(f / "run" / "metrics.jsonl", json.dumps({"epoch": 1, "train_loss": 1.0}) + "\n")
    write(f / "badmetrics" / "metrics.jsonl", json.dumps({"epoch": 1}) + "\nnot json\n" + json.dumps({"epoch": 2}))
    write(f / "badsummary" / "metrics.jsonl", json.dumps({"epoch": 1}) + "\n")
    write(f / "badsummary" / "summary.json", "{not json")
    write(f / "listsummary" / "metrics.jsonl", json.dumps({"epoch": 1}) + "\n")
    write(f / "listsummary" / "summary.json", "[]")
    write(f / "ablation" / "baseline" / "seed0" / "config.toml", "seed = 99\n")
    write(f / "ablation" / "baseline" / "seed0" / "summary.json", "{}")
    write(f / "bad.toml", "[optim\nepochs = 1\n")
    write(f / "negative.toml", "[optim]\nepochs = 0\n")


def hunted(f):
    """Files of the rows found by trying mistakes: checkpoints edited or written by other programs, a recipe in
    another encoding, a mean with nan, run folders whose metrics hold nothing or no text."""
    ckpt = torch.load(f / "tiny.pt", weights_only=True)
    h = f / "hunt"
    h.mkdir()
    changes = {"modelstr": {"model": "weights"}, "configstr": {"config": "cifar10"},
               "classesstr": {"classes": ["cat", "dog", "fish"]}, "pipestr": {"pipeline": "imagenet"}}
    for name, change in changes.items():
        torch.save({**ckpt, **change}, h / f"{name}.pt")
    torch.save({k: v for k, v in ckpt.items() if k != "format"}, h / "noformat.pt")
    torch.save(torch.nn.Linear(1, 1), h / "module.pt")  # a whole pickled model, not its weights
    write(h / "latin1.toml", "# caf\xe9\n[optim]\nepochs = 1\n".encode("latin-1"))
    np.save(h / "nan-mean.npy", np.full((3, 256, 256), np.nan, np.float32))
    write(h / "emptymetrics" / "metrics.jsonl")
    write(h / "binmetrics" / "metrics.jsonl", b"\xff\xfe\x00")
    jpeg = (f / "img.jpg").read_bytes()
    for name in ("train/only/0.jpg", "train/only/1.jpg", "val/only/0.jpg"):  # one class
        write(h / "oneclass" / name, jpeg)
    for name in ("train/a/0.jpg", "train/b/0.jpg", "val/A/0.jpg", "val/B/0.jpg"):  # val/ spelt otherwise
        write(h / "valnames" / name, jpeg)
    for name in ("cat/0.jpg", "dog/0.jpg"):  # photos sorted into classes, but no train/ and val/
        write(h / "sorted" / name, jpeg)
    for c in range(3):  # val/ alone, the tiny checkpoint's classes
        write(h / "valonly" / "val" / f"n{c}" / "0.jpg", jpeg)
    tar_of(h / "imgtar" / "ILSVRC2012_img_train.tar", {"cat/0.jpg": jpeg})  # images, not per-class tars
    import gzip

    plain = (h / "imgtar" / "ILSVRC2012_img_train.tar").read_bytes()
    write(h / "gztar" / "ILSVRC2012_img_train.tar", gzip.compress(plain))  # the tar gzipped, its name kept
    write(h / "kaggle" / "ILSVRC" / "Data" / "CLS-LOC" / "train" / "n0" / "0.jpg", jpeg)  # Kaggle's download
    write(h / "kaggle" / "LOC_val_solution.csv", "ImageId,PredictionString\n")
    from alexnet import AlexNet, ModelConfig

    torch.save(AlexNet(ModelConfig(width=1 / 16, num_classes=3)).state_dict(), h / "bare-state-dict.pt")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The fixture folder, built once; its files and their sizes and times (no row may change them)."""
    f = tmp_path_factory.mktemp("mistakes")
    checkpoints(f)
    weights(f)
    photos(f)
    imagenet_sources(f)
    prepared(f)
    shards(f)
    exports(f)
    runs(f)
    hunted(f)
    return f, snapshot(f)


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def offline(monkeypatch):
    """CIFAR-10's download fails at once: a closed local port, no waiting between tries."""
    from alexnet.data.cifar import source

    monkeypatch.setattr(source, "URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    monkeypatch.setattr(source.time, "sleep", lambda seconds: None)


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.xfail(reason=KNOWN[name], strict=True))
                                  if name in KNOWN else name for name in ROWS])
def test_mistake(name, made, busy_port, offline, tmp_path, monkeypatch, capsys):
    folder, before = made
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("ALEXNET_DATA", str(work / "cache"))
    monkeypatch.setenv("ALEXNET_MIRROR", str(folder / "empty"))
    names = {"folder": folder, "tiny": folder / "tiny.pt", "img": folder / "img.jpg", "out": work / "out",
             "busy": busy_port, "cifar_images": folder / "cifar_images"}
    command, fragment, *more = ROWS[name]
    command, fragment, options = command.format(**names), fragment.format(**names), (more or [{}])[0]
    for key, value in options.get("env", {}).items():
        monkeypatch.setenv(key, value.format(**names))
    if "url" in options:
        from alexnet.data.cifar import source

        monkeypatch.setattr(source, "URL", options["url"].format(**names))
    line = refused(command, capsys)
    assert fragment in line, line
    written = [p for p in work.rglob("*") if p.is_file() and "cache" not in p.relative_to(work).parts]
    assert not written, "a refused command wrote files"  # besides a data cache ($ALEXNET_DATA: decoded CIFAR-10)
    assert snapshot(folder) == before, "a refused command changed the fixtures"


def _library_guards(f):
    """The library's own refusals of values the command line never passes (its options and the config refuse
    them first): calls into the library, each with the fragment of its one-line message."""
    from alexnet.data.cifar.load import load_cifar10
    from alexnet.data.imagenet import shards
    from alexnet.data.imagenet.prepare import prepare_imagenet
    from alexnet.data.subset import balanced_indices
    from alexnet.paper.figure1 import Figure1Config
    from alexnet.runs.folder import RunFolder
    from alexnet.runtime import autocast
    from alexnet.use.export import export

    src, out = f / "imagefolder", f / "empty" / "never"
    return {
        "cifar-limit": (lambda: load_cifar10(str(f / "cifar_images"), limit=-1), "data limit must be a positive"),
        "subset-negative": (lambda: balanced_indices(torch.zeros(4), 2, -1, 0), "must not be negative"),
        "prepare-resize": (lambda: prepare_imagenet(src, out, resize="crop"), "resize must be center or squash"),
        "prepare-format": (lambda: prepare_imagenet(src, out, fmt="png"), "unknown format 'png'"),
        "prepare-quality": (lambda: prepare_imagenet(src, out, quality=0), "JPEG quality must be 1..100"),
        "prepare-shard-size": (lambda: prepare_imagenet(src, out, shard_size=0), "shard size must be a positive"),
        "shard-format": (lambda: shards.encode(torch.zeros(3, 2, 2, dtype=torch.uint8), "png"), "unknown shard"),
        "autocast-precision": (lambda: autocast(torch.device("cpu"), "fp8"), "train.precision must be one of"),
        "figure1-setup": (lambda: Figure1Config(setup="vintage"), "--setup must be one of"),
        "export-format": (lambda: export(f / "tiny.pt", "png", out), "export format 'png' is unknown"),
        "resume-nothing": (lambda: RunFolder(f / "empty").start("", resume=True), "--resume: no checkpoint at"),
        **_api_guards(f),
    }


GUARDS = ("cifar-limit", "subset-negative", "prepare-resize", "prepare-format", "prepare-quality",
          "prepare-shard-size", "shard-format", "autocast-precision", "figure1-setup", "export-format",
          "resume-nothing")
GUARDS += ("load-map-location-word", "load-map-location-cuda", "save-checkpoint-folder", "load-bare-state-dict",
           "hub-pretrained", "hub-unknown-option", "predictor-device-word")


def _api_guards(f):
    """The Python API's refusals (UsageError) of what a user passes it: README's "Python" section, hubconf.py."""
    import importlib.util

    from alexnet import AlexNet, ModelConfig, load_model, load_run, save_checkpoint
    from alexnet.use.predictor import Predictor

    spec = importlib.util.spec_from_file_location("hubconf", Path(__file__).parents[1] / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    bare = f / "hunt" / "bare-state-dict.pt"  # torch.save(model.state_dict(), path): written by `hunted`
    guards = {
        "load-map-location-word": (lambda: load_model(f / "tiny.pt", map_location="gpu"), "map_location='gpu' is "
                                   "not a device torch knows"),
        "save-checkpoint-folder": (lambda: save_checkpoint(f / "empty", AlexNet(ModelConfig(width=1 / 16))),
                                   "is a folder; give save_checkpoint a file name"),
        "load-bare-state-dict": (lambda: load_model(bare), "a bare state_dict of the network: load it with"),
        "hub-pretrained": (lambda: hub.alexnet(pretrained=True), "no weights are downloaded; pass checkpoint=PATH"),
        "hub-unknown-option": (lambda: hub.alexnet(classes=10), "unknown option(s) classes; it takes checkpoint=PATH"),
        "predictor-device-word": (lambda: Predictor.from_run(load_run(f / "tiny.pt"), device="gpu"),
                                  "device 'gpu' is not usable here; use 'cpu'"),
    }
    if not torch.cuda.is_available():
        guards["load-map-location-cuda"] = (lambda: load_model(f / "tiny.pt", map_location="cuda"),
                                            "map_location='cuda' but no CUDA GPU is visible; use 'cpu'")
    else:
        guards["load-map-location-cuda"] = (lambda: load_model(f / "tiny.pt", map_location="cuda:99"),
                                            "map_location='cuda:99' but this machine shows")
    return guards


def _api_mistakes():
    """What a user passes the network, its config, the checkpoint functions and the input pipeline: each a
    TypeError or ValueError whose one line names the value and the fix (not an error deep inside torch)."""
    from alexnet import AlexNet, ModelConfig, features, load_model, load_run, save_checkpoint
    from alexnet.data.pipeline import Pipeline

    net = AlexNet(ModelConfig(width=1 / 16, num_classes=3)).eval()
    pipeline = Pipeline(kind="imagenet", size=224, stored=256, mean=torch.full((3, 256, 256), 115.0),
                        mean_kind="image")
    x = torch.randn(1, 3, 224, 224)
    return {
        "config-classes-text": (lambda: ModelConfig(num_classes="10"), "model.num_classes must be an int"),
        "config-classes-float": (lambda: ModelConfig(num_classes=2.5), "got 2.5 (float)"),
        "config-width-text": (lambda: ModelConfig(width="half"), "model.width must be a number; got 'half'"),
        "config-width-nan": (lambda: ModelConfig(width=float("nan")), "width=nan"),
        "config-towers-text": (lambda: ModelConfig(towers="no"), "model.towers must be True or False; got 'no'"),
        "config-input-size": (lambda: ModelConfig(input_size=0), "model.input_size=0: must be at least 1"),
        "alexnet-int": (lambda: AlexNet(10), "AlexNet takes a ModelConfig; got int 10"),
        "alexnet-dict": (lambda: AlexNet({"num_classes": 10}), "AlexNet(ModelConfig(**config))"),
        "forward-one-image": (lambda: net(x[0]), "got shape (3, 224, 224): one image: add the batch dimension"),
        "forward-channels-last": (lambda: net(x.permute(0, 2, 3, 1)), "channels last: x.permute(0, 3, 1, 2)"),
        "forward-gray": (lambda: net(x[:, :1]), "grayscale: x.expand(-1, 3, -1, -1)"),
        "forward-uint8": (lambda: net(x.to(torch.uint8)), "got torch.uint8 pixels: pass uint8 images through"),
        "forward-double": (lambda: net(x.double()), "the input is torch.float64 but the network's weights are"),
        "forward-pil": (lambda: net(Image.new("RGB", (224, 224))), "got Image: make one with"),
        "forward-numpy": (lambda: net(x.numpy()), "got ndarray"),
        "forward-tiny": (lambda: net(torch.randn(1, 3, 32, 32)), "input 32x32 is too small for this network"),
        "forward-stored-side": (lambda: net(torch.randn(1, 3, 256, 256)), "gives a 7x7 pool5 map but fc6 takes 6x6"),
        "features-other-module": (lambda: features(torch.nn.Linear(2, 2), x), "features takes an AlexNet"),
        "load-none": (lambda: load_model(None), "takes the path of a .pt file (str or pathlib.Path); got NoneType"),
        "load-a-network": (lambda: load_model(net), "got a network"),
        "save-swapped": (lambda: save_checkpoint(net, "model.pt"), "the path comes first"),
        "save-other-module": (lambda: save_checkpoint("x.pt", torch.nn.Linear(2, 2)), "writes an AlexNet; got Linear"),
        "pipeline-pil": (lambda: pipeline.eval_input(Image.new("RGB", (256, 256))), "pil_to_tensor(image)[None]"),
        "pipeline-one-image": (lambda: pipeline.eval_input(torch.zeros(3, 256, 256, dtype=torch.uint8)),
                               "add the batch dimension, images[None]"),
        "pipeline-floats": (lambda: pipeline.eval_input(torch.rand(1, 3, 256, 256)), "takes uint8 pixels 0..255"),
        "load-run-overrides-string": (lambda: load_run(Path(__file__).parent / "missing.pt", "data.limit=5"),
                                      "got the string 'data.limit=5': pass ['data.limit=5']"),
    }


@pytest.mark.parametrize("name", list(_api_mistakes()))
def test_api_mistake(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    call, fragment = _api_mistakes()[name]
    with pytest.raises((TypeError, ValueError)) as refused:
        call()
    assert fragment in str(refused.value) and "\n" not in str(refused.value), str(refused.value)
    assert not list(tmp_path.iterdir()), "a refused call wrote a file"


@pytest.mark.parametrize("name", GUARDS)
def test_library_guard(name, made):
    folder, before = made
    call, fragment = _library_guards(folder)[name]
    with pytest.raises(UsageError) as refused:
        call()
    assert fragment in str(refused.value) and "\n" not in str(refused.value)
    assert snapshot(folder) == before


def test_every_usage_error_site_is_listed(capsys):
    """tests/usage_sites.py, run as a script: one FILE:LINE per ``raise UsageError`` of src/alexnet, each a
    raise on that line, then the count."""
    from usage_sites import SRC
    from usage_sites import main as list_sites

    assert list_sites([]) == 0
    *lines, count = capsys.readouterr().out.splitlines()
    sites = usage_sites()
    assert count == f"{len(sites)} raise UsageError sites" and lines == [f"{p}:{n}" for p, n in sites]
    assert len(sites) > 100 and ("alexnet/commands/serve.py" in {path for path, _ in sites})
    for path, line in sites:
        assert "raise" in (SRC.parent / path).read_text().splitlines()[line - 1]
