"""Probe: does an ImageNet-pretrained CNN on log-mels hear a voice family it never heard better than the default
Whisper-style encoder? timm's efficientnet_lite0 with the offline ImageNet weights (stem summed to one channel),
fed 128-mel, 10 ms log-mels of the embedded corpus without one family, with the default recipe's augmentation
(`ClipDataset`, `ClipCollator`), AdamW + cosine; scored like benchmarks/voice_families.py on the held-out family's
clips (clean + noisy at 5-15 dB SNR), with the scenario's own threshold calibration. A probe, not a product path: a
timm network on spectrograms is no `pipeline("audio-classification")` folder.

    python benchmarks/voice_imagenet_cnn.py --holdout piper --epochs 4      # ~25 min on 2 cores
"""

import argparse
import json
import math
import time

import numpy as np
import timm
import torch
import torch.nn as nn
from transformers import WhisperFeatureExtractor

from fmhub import audio
from fmhub.data import audio_augment as aug
from fmhub.data import speech_corpus as corpus
from fmhub.data import voice_corpus
from fmhub.data.audio_data import ClipCollator, ClipDataset, corpus_dir, map_label
from fmhub.models.timm_backbone import load_efficientnet_lite0_imagenet
from fmhub.scenarios.voice_command import VoiceCommand

p = argparse.ArgumentParser()
p.add_argument("--holdout", required=True)
p.add_argument("--epochs", type=int, default=4)
p.add_argument("--mels", type=int, default=128)
p.add_argument("--hop", type=int, default=160)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--bs", type=int, default=32)
p.add_argument("--pretrained", type=int, default=1)
p.add_argument("--limit", type=int, default=0)
p.add_argument("--save", default="")
a = p.parse_args()
torch.manual_seed(0)
np.random.seed(0)
names = list(corpus.LABELS)
fams = [f for f in voice_corpus.installed_families() if f != a.holdout]
data = voice_corpus.load_embedded(fams, corpus_dir())


def enc(split):
    w, lab, _ = data[split]
    return w, [map_label(x, names) for x in lab]


trw, trl = enc("train")
vaw, val = enc("validation")
if a.limit:
    idx = np.random.permutation(len(trl))[: a.limit]
    trw = trw[idx]
    trl = [trl[i] for i in idx]
print("train", len(trl), "val", len(val), flush=True)
# held-out family clips: clean + noisy, like benchmarks/voice_families.py
part = voice_corpus.load_family(a.holdout, corpus_dir())
splits = ["test"] if a.holdout == voice_corpus.ESPEAK else ["train", "validation", "test"]
rng = np.random.default_rng(0)
hw, hl = [], []
for s in splits:
    waves, labels, _ = part[s]
    for wave, label in zip(waves, labels):
        if label == voice_corpus.SILENCE:
            continue
        clean = wave.astype(np.float32) / 32768.0
        noise = aug.random_noise(len(clean), rng)
        noisy = np.clip(aug.add_noise(clean, noise, rng.uniform(5, 15)), -1, 1)
        for c in (clean, noisy):
            hw.append(c)
            hl.append(map_label(label, names))
hw = np.stack(hw)
hl = np.array(hl)
print("heldout", len(hl), flush=True)

ext = WhisperFeatureExtractor(feature_size=a.mels, chunk_length=1, hop_length=a.hop)


if a.pretrained:
    m = load_efficientnet_lite0_imagenet("efficientnet_lite0")
else:
    m = timm.create_model("efficientnet_lite0", pretrained=False)
w = m.conv_stem.weight.data
m.conv_stem = nn.Conv2d(1, w.shape[0], 3, 2, 1, bias=False)
m.conv_stem.weight.data = w.sum(1, keepdim=True)
m.reset_classifier(len(names))


class Net(nn.Module):
    def __init__(s, m):
        super().__init__()
        s.m = m

    def forward(s, x):
        return s.m(((x - 0.0) / 0.5).unsqueeze(1))


net = Net(m)

# banks from train
sil = [trw[i].astype(np.float32) / 32768 for i, lab in enumerate(trl) if names[lab] == "_silence_"][:200]
unk = [trw[i].astype(np.float32) / 32768 for i, lab in enumerate(trl) if names[lab] == "_unknown_"][:200]
ds = ClipDataset(trw, trl, augment=True, banks={"noise_bank": sil, "speech_bank": unk})


class Seeded(torch.utils.data.Dataset):
    def __init__(s, d):
        s.d = d
        s.epoch = 0

    def __len__(s):
        return len(s.d)

    def __getitem__(s, i):
        np.random.seed((s.epoch * 1000003 + i) % 2**31)
        return s.d[i]


sds = Seeded(ds)
col = ClipCollator(ext)
dl = torch.utils.data.DataLoader(sds, batch_size=a.bs, shuffle=True, collate_fn=col, num_workers=1, drop_last=True)
opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=0.05)
steps = a.epochs * len(dl)
warm = max(1, int(0.05 * steps))
sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda s: min(1, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1, s / steps)))
)


def feats(waves):
    out = []
    for i in range(0, len(waves), 256):
        b = waves[i : i + 256]
        b = b.astype(np.float32) / 32768.0 if b.dtype == np.int16 else b
        out.append(audio.features(ext, list(b))["input_features"])
    return torch.cat(out)


@torch.no_grad()
def probs_of(X):
    net.eval()
    out = []
    for i in range(0, len(X), 128):
        out.append(torch.softmax(net(X[i : i + 128]), -1))
    net.train()
    return torch.cat(out).numpy()


Xv = feats(vaw)
Xh = feats(hw)
yv = np.array(val)
sc = VoiceCommand()
t0 = time.time()
step = 0
for ep in range(a.epochs):
    sds.epoch = ep
    net.train()
    for b in dl:
        loss = nn.functional.cross_entropy(net(b["input_features"]), b["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 100 == 0:
            print(f"ep {ep} step {step}/{steps} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
    pv = probs_of(Xv)
    ph = probs_of(Xh)
    cal = sc.calibrate(pv, yv, names)
    r = sc.score_predictions(ph, hl, cal, names)
    print(
        json.dumps({"epoch": ep, "val_acc": float((pv.argmax(1) == yv).mean()), **r, "s": round(time.time() - t0)}),
        flush=True,
    )
if a.save:
    torch.save(net.state_dict(), a.save)
    np.save(a.save + ".heldout_probs.npy", ph)
