"""evaluate_model: a model's predictions by its own code/inference.py, in a real worker subprocess."""
import contextlib
import hashlib
import math
import shutil
import tarfile
import tempfile

import pytest

from backends.errors import InvalidRequestError, JobFailedError, NotFoundError
from backends.evaluation import Evaluation, ImagePrediction, evaluate_model
from backends.model_artifact import TRAINING_SOURCE_DIR, pack_model_artifact
from tests.helpers import image_bytes, make_model_artifact

pytestmark = pytest.mark.integration
CLASSES = ["cat", "dog", "fox"]

# Appended to a copy of training/inference.py: the artifact's own handle() answers "patched" for
# every image, which only that artifact's code can do.
PATCHED_HANDLE = """

_handle = handle


def handle(body, content_type, accept, model):
    answer = json.loads(_handle(body, content_type, accept, model))
    ranked = [{"label": "patched", "score": 1.0}]
    batch = isinstance(answer["predictions"][0], list)
    predictions = [ranked for _ in answer["predictions"]] if batch else ranked
    return json.dumps({"predictions": predictions, "model_version": answer["model_version"]})
"""

SAME = image_bytes("PNG", (90, 140, 200), (40, 40))  # one image under each label: its three probabilities
CORRUPT_KEY = "dog/corrupt.jpg"
IMAGES = [
    ("cat/0001.png", image_bytes("PNG", (220, 40, 40))),
    ("cat/0002.jpg", image_bytes("JPEG", (200, 90, 30), (80, 60))),
    ("dog/0001.png", image_bytes("PNG", (30, 200, 60), (32, 32))),
    ("dog/0002.jpeg", image_bytes("JPEG", (10, 120, 10))),
    (CORRUPT_KEY, b"\xff\xd8\xff\xe0 this is not a JPEG"),
    ("fox/0001.png", image_bytes("PNG", (240, 240, 240), (50, 70))),
    ("fox/sub/0002.JPG", image_bytes("JPEG", (5, 5, 90))),
    ("cat/x.png", SAME), ("dog/x.png", SAME), ("fox/x.png", SAME),
]


@contextlib.contextmanager
def scratch(folder):
    """Temporary folders made under `folder`, so a test can see that none is left behind."""
    folder.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(folder))
        yield folder
    assert list(folder.iterdir()) == [], "evaluate_model left temporary files behind"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    good = make_model_artifact(root / "good", classes=CLASSES)
    broken = make_model_artifact(root / "broken", classes=CLASSES, broken=True)
    shutil.copytree(TRAINING_SOURCE_DIR, root / "patched-code", ignore=shutil.ignore_patterns("__pycache__"))
    with open(root / "patched-code" / "inference.py", "a") as f:
        f.write(PATCHED_HANDLE)
    patched = pack_model_artifact(root / "good" / "model", root / "patched" / "model.tar.gz", root / "patched-code")
    weights_hash = hashlib.sha256((root / "good" / "model" / "model.pth").read_bytes()).hexdigest()[:12]
    return {"good": good, "broken": broken, "patched": str(patched), "weights_hash": weights_hash}


@pytest.fixture(scope="module")
def evaluation(artifacts, tmp_path_factory) -> Evaluation:
    # batch_size=3: some batches go whole, the one with the corrupt image falls back to one image a call
    with scratch(tmp_path_factory.mktemp("scratch")):
        return evaluate_model(artifacts["good"], IMAGES, model_version="challenger-7", batch_size=3)


def test_predictions_in_order_with_keys_and_labels(evaluation):
    assert [p.key for p in evaluation.predictions] == [key for key, _ in IMAGES]
    assert [p.expected for p in evaluation.predictions] == [key.split("/")[0] for key, _ in IMAGES]
    assert evaluation.model_version == "challenger-7"
    for p in evaluation.predictions:
        assert 0.0 <= p.true_label_probability <= 1.0
        assert 0.0 <= p.score <= 1.0
        if p.key != CORRUPT_KEY:
            assert p.error is None
            assert p.predicted in CLASSES
            assert p.score >= p.true_label_probability - 1e-7  # the top-1 is the most probable label
            assert p.correct == (p.predicted == p.expected)
            if p.correct:
                assert p.score == pytest.approx(p.true_label_probability, abs=1e-7)


def test_every_class_probability_comes_back_and_the_top_one_is_predicted(evaluation):
    by_key = {p.key: p for p in evaluation.predictions}
    same = [by_key[f"{label}/x.png"] for label in CLASSES]
    probabilities = {p.expected: p.true_label_probability for p in same}
    assert abs(sum(probabilities.values()) - 1.0) < 1e-4
    assert {p.predicted for p in same} == {max(probabilities, key=probabilities.get)}
    assert all(p.score == pytest.approx(max(probabilities.values()), abs=1e-6) for p in same)
    assert [p.correct for p in same].count(True) == 1


def test_a_corrupt_image_is_a_wrong_prediction_with_its_error(evaluation):
    corrupt = next(p for p in evaluation.predictions if p.key == CORRUPT_KEY)
    assert (corrupt.predicted, corrupt.score, corrupt.true_label_probability) == ("", 0.0, 0.0)
    assert not corrupt.correct
    assert "InvalidImage" in corrupt.error and "could not decode" in corrupt.error


def test_accuracy_loss_and_per_class_accuracy_follow_the_predictions(evaluation):
    predictions = evaluation.predictions
    right = [p.error is None and p.predicted == p.expected for p in predictions]
    assert evaluation.accuracy == pytest.approx(sum(right) / len(predictions))
    losses = [-math.log(max(p.true_label_probability, 1e-12)) for p in predictions]
    assert evaluation.loss == pytest.approx(sum(losses) / len(losses))
    expected = {}
    for label in sorted({p.expected for p in predictions}):
        hits = [r for p, r in zip(predictions, right) if p.expected == label]
        expected[label] = sum(hits) / len(hits)
    assert evaluation.per_class_accuracy() == pytest.approx(expected)
    assert list(evaluation.per_class_accuracy()) == CLASSES


def test_the_metrics_on_known_predictions():
    def p(key, predicted, true_p, error=None):
        return ImagePrediction(key, key.split("/")[0], predicted, max(true_p, 0.5) if predicted else 0.0, true_p, error)

    evaluation = Evaluation("v1", [p("cat/a.png", "cat", 0.8), p("cat/b.png", "dog", 0.25),
                                   p("dog/a.png", "dog", 0.5), p("dog/b.png", "", 0.0, "InvalidImage: broken")])
    assert evaluation.accuracy == 0.5
    assert evaluation.loss == pytest.approx((-math.log(0.8) - math.log(0.25) - math.log(0.5) - math.log(1e-12)) / 4)
    assert evaluation.per_class_accuracy() == {"cat": 0.5, "dog": 0.5}


def test_one_image_a_call_gives_the_same_predictions(artifacts, evaluation, tmp_path):
    with scratch(tmp_path / "scratch"):
        single = evaluate_model(artifacts["good"], IMAGES, model_version="challenger-7", batch_size=1)
    for a, b in zip(single.predictions, evaluation.predictions):
        assert (a.key, a.predicted, a.error is None) == (b.key, b.predicted, b.error is None)
        assert a.true_label_probability == pytest.approx(b.true_label_probability, abs=1e-5)


def test_the_models_own_code_is_used(artifacts, tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_VERSION", "the orchestrator's, not the model's")
    with scratch(tmp_path / "scratch"):
        patched = evaluate_model(artifacts["patched"], IMAGES[:4] + IMAGES[5:7])
    assert [p.predicted for p in patched.predictions] == ["patched"] * 6
    assert all(p.true_label_probability == 0.0 and not p.correct for p in patched.predictions)
    assert patched.accuracy == 0.0
    assert patched.model_version == artifacts["weights_hash"]  # no MODEL_VERSION: the weights' hash
    with tarfile.open(artifacts["patched"]) as tar:  # the project's own serving code is untouched
        assert "_handle = handle" in tar.extractfile("code/inference.py").read().decode()
    assert "_handle = handle" not in (TRAINING_SOURCE_DIR / "inference.py").read_text()


def test_a_model_that_does_not_load_fails_the_evaluation(artifacts, tmp_path):
    with scratch(tmp_path / "scratch"), pytest.raises(JobFailedError) as failure:
        evaluate_model(artifacts["broken"], IMAGES[:2])
    assert "model_fn failed: UnpicklingError" in str(failure.value)  # the garbage weights
    assert "exited with 1" in str(failure.value)


def test_a_worker_past_its_timeout_fails_the_evaluation(artifacts, tmp_path):
    with scratch(tmp_path / "scratch"), pytest.raises(JobFailedError, match="ran past 0.5 s"):
        evaluate_model(artifacts["good"], IMAGES[:2], timeout_s=0.5)


@pytest.mark.parametrize("key", ["../cat/x.png", "cat/../../x.png", "/tmp/cat/x.png", "cat/./x.png",
                                 "cat//x.png", "x.png", ""])
def test_keys_outside_the_split_are_refused(artifacts, tmp_path, key):
    with scratch(tmp_path / "scratch"), pytest.raises(InvalidRequestError):
        evaluate_model(artifacts["good"], [("cat/ok.png", SAME), (key, SAME)])


def test_bad_requests_are_refused(artifacts, tmp_path):
    with scratch(tmp_path / "scratch"):
        with pytest.raises(InvalidRequestError, match="twice"):
            evaluate_model(artifacts["good"], [("cat/x.png", SAME), ("cat/x.png", SAME)])
        with pytest.raises(InvalidRequestError, match="clashes"):
            evaluate_model(artifacts["good"], [("cat/x", SAME), ("cat/x/y.png", SAME)])
        with pytest.raises(InvalidRequestError, match="no images"):
            evaluate_model(artifacts["good"], [])
        with pytest.raises(NotFoundError):
            evaluate_model(tmp_path / "missing.tar.gz", [("cat/x.png", SAME)])
