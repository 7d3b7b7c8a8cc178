import math
import re

from core.metrics import METRIC_DEFINITIONS, epoch_rows, final_metrics, parse_metric_line, parse_metric_log
from training.train import metric_line

LOG = """\
training resnet18 on 70 images, 10 classes
[metric] epoch=1 train_loss=2.3 train_accuracy=0.1 valid_loss=2.2 valid_accuracy=0.2 epoch_seconds=1.5 images_per_second=46.6
[metric] epoch=2 train_loss=1.9 train_accuracy=0.4 valid_loss=2.4 valid_accuracy=0.3 epoch_seconds=1.1 images_per_second=63.6
[metric] best_epoch=1 valid_loss=2.2 valid_accuracy=0.2
[metric] test_loss=2.25 test_accuracy=0.15
""".splitlines()


def test_every_epoch_value_is_read_in_order():
    series = parse_metric_log(LOG)
    assert series["epoch"] == [1, 2]
    assert series["valid_loss"] == [2.2, 2.4, 2.2]
    assert series["best_epoch"] == [1]


def test_final_values_are_the_restored_best_epoch():
    final = final_metrics(parse_metric_log(LOG))
    assert final["valid_loss"] == 2.2 and final["test_accuracy"] == 0.15


def test_epoch_does_not_match_inside_best_epoch():
    assert "epoch" not in parse_metric_line("[metric] best_epoch=3 valid_loss=0.5")


def test_other_lines_and_odd_numbers():
    assert parse_metric_line("valid_loss=0.3 but no marker") == {}
    values = parse_metric_line("[metric] epoch=3 train_loss=1e-05 valid_loss=nan")
    assert values["train_loss"] == 1e-05 and math.isnan(values["valid_loss"])


def test_training_script_lines_round_trip():
    line = metric_line(epoch=4, train_loss=0.123456789, valid_accuracy=0.875)
    assert parse_metric_line(line) == {"epoch": 4, "train_loss": 0.123457, "valid_accuracy": 0.875}


def test_definitions_are_sagemaker_shaped():
    for definition in METRIC_DEFINITIONS:
        assert set(definition) == {"Name", "Regex"}
        assert re.compile(definition["Regex"]).groups == 1


def test_epoch_rows():
    rows = epoch_rows(LOG)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["train_loss"] == 1.9
