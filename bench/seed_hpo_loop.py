"""The seed project's training loop, re-created as the baseline of bench/training_throughput.py.

The seed is the Udacity "Operationalizing ML on SageMaker" dog-breed project; its hpo.py
is a plain PyTorch script: a frozen ResNet-50 with a small new `fc` head, torchvision
ImageFolder + per-image transforms, a default (single-process) DataLoader, and per epoch
a train() pass in train mode and a test() pass over the validation set. This module keeps
that structure and style on purpose, warts included, so the comparison is with what the
seed actually did. Deviations, none of which changes the speed:
  * weights=None instead of pretrained=True (never download; weights don't change speed);
  * the architecture and image size are parameters (for the benchmark's --quick run), and the
    head's input width is read from `model.fc` (2048 for resnet50, as the seed hard-coded);
  * functions return their metrics instead of only logging them, and run() times the epochs.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torchvision
from torch import nn, optim
from torchvision import transforms

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def test(model, test_loader, criterion):
    model.eval()
    running_loss = 0.0
    running_corrects = 0
    with torch.no_grad():
        for inputs, labels in test_loader:
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            _, preds = torch.max(outputs, 1)
            running_loss += loss.item() * inputs.size(0)
            running_corrects += torch.sum(preds == labels.data).item()
    total_loss = running_loss / len(test_loader.dataset)
    total_acc = running_corrects / len(test_loader.dataset)
    return total_loss, total_acc


def train(model, train_loader, criterion, optimizer):
    # As in the seed: the whole model in train mode, so the frozen backbone's BatchNorm
    # layers use batch statistics (and update their running stats) on every forward.
    model.train()
    running_loss = 0.0
    running_corrects = 0
    for inputs, labels in train_loader:
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        _, preds = torch.max(outputs, 1)
        running_loss += loss.item() * inputs.size(0)
        running_corrects += torch.sum(preds == labels.data).item()
    total_loss = running_loss / len(train_loader.dataset)
    total_acc = running_corrects / len(train_loader.dataset)
    return model, total_loss, total_acc


def net(num_classes, architecture="resnet50"):
    model = getattr(torchvision.models, architecture)(weights=None)
    for param in model.parameters():
        param.requires_grad = False
    num_features = model.fc.in_features  # 2048 for resnet50
    model.fc = nn.Sequential(
        nn.Linear(num_features, 128),
        nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    )
    return model


def create_data_loaders(data, batch_size, image_size=224):
    train_data_path = os.path.join(data, "train")
    test_data_path = os.path.join(data, "test")
    validation_data_path = os.path.join(data, "valid")

    train_transform = transforms.Compose([
        transforms.Resize((image_size, image_size)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    test_transform = transforms.Compose([
        transforms.Resize((image_size, image_size)),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])

    train_data = torchvision.datasets.ImageFolder(root=train_data_path, transform=train_transform)
    train_data_loader = torch.utils.data.DataLoader(train_data, batch_size=batch_size, shuffle=True)

    test_data = torchvision.datasets.ImageFolder(root=test_data_path, transform=test_transform)
    test_data_loader = torch.utils.data.DataLoader(test_data, batch_size=batch_size, shuffle=True)

    validation_data = torchvision.datasets.ImageFolder(root=validation_data_path, transform=test_transform)
    validation_data_loader = torch.utils.data.DataLoader(validation_data, batch_size=batch_size, shuffle=True)

    return train_data_loader, test_data_loader, validation_data_loader


def run(data_dir, epochs, batch_size, learning_rate, architecture="resnet50", image_size=224, seed=0, log=print):
    """Train as the seed did and return timings and metrics.

    `wall_s` covers the epochs only (train + validation, data loading included); model and
    loader construction and the final test pass are outside it, as in the benchmark's
    measurement of our Trainer.
    """
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)  # the same cores our Trainer uses on CPU
    train_loader, test_loader, valid_loader = create_data_loaders(data_dir, batch_size, image_size)
    num_classes = len(train_loader.dataset.classes)
    model = net(num_classes, architecture)
    loss_criterion = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.fc.parameters(), lr=learning_rate)

    epoch_seconds, history = [], []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        model, train_loss, train_acc = train(model, train_loader, loss_criterion, optimizer)
        valid_loss, valid_acc = test(model, valid_loader, loss_criterion)
        epoch_seconds.append(time.perf_counter() - epoch_started)
        history.append({"train_loss": train_loss, "train_accuracy": train_acc,
                        "valid_loss": valid_loss, "valid_accuracy": valid_acc})
        log(f"epoch {epoch}: train_loss={train_loss:.4f} train_acc={train_acc:.3f} "
            f"valid_loss={valid_loss:.4f} valid_acc={valid_acc:.3f} ({epoch_seconds[-1]:.1f} s)")
    wall_s = time.perf_counter() - started

    test_loss, test_acc = test(model, test_loader, loss_criterion)
    log(f"test: loss={test_loss:.4f} acc={test_acc:.3f}")
    return {
        "epochs": epochs,
        "train_images": len(train_loader.dataset),
        "valid_images": len(valid_loader.dataset),
        "wall_s": wall_s,
        "epoch_s": epoch_seconds,
        "history": history,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "threads": torch.get_num_threads(),
        "workers": train_loader.num_workers,
        # every epoch runs the backbone on every train and valid image
        "backbone_forwards": epochs * (len(train_loader.dataset) + len(valid_loader.dataset)),
    }


def main(argv=None):
    # The seed's command line (underscored flags, SageMaker-style), for running it on its own.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learning_rate", type=float, default=0.001)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--architecture", default="resnet50")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--data_dir", default=os.environ.get("SM_CHANNEL_TRAINING", "bench-data"))
    args = parser.parse_args(argv)
    result = run(args.data_dir, args.epochs, args.batch_size, args.learning_rate, args.architecture, args.image_size)
    print(f"{result['epochs'] * result['train_images'] / result['wall_s']:.2f} train images/s")


if __name__ == "__main__":
    main()
