"""The committed reference run reproduces here: every number identical in the reference's environment, every
score inside its committed interval elsewhere (``fedmoe.studies.reference``). This is the check that would have
caught the quickstart's numbers moving on a fresh machine."""

import json

from fedmoe.studies.reference import REFERENCE_FILE, check, measure


def test_the_reference_run_reproduces(tmp_path):
    reference = json.loads(REFERENCE_FILE.read_text())
    assert max(r.get("score", 0) for r in reference["rounds"]) > 0.2, "the reference must learn to prove anything"
    promise, problems = check(reference, measure(tmp_path))
    assert not problems, f"promise {promise!r} broken: " + "; ".join(problems)


def test_check_holds_each_promise_to_its_own_standard():
    env = {"torch": "2.13.0", "cpu_capability": "AVX2", "torch_threads": 1}
    ref = {"environment": env, "rounds": [{"round": 0, "train_loss": None, "score": 0.5, "score_lo": 0.4,
                                           "score_hi": 0.6, "item_scores": [0.0, 1.0]}]}
    same = json.loads(json.dumps(ref))
    assert check(ref, same) == ("exact", [])
    same["rounds"][0]["item_scores"] = [1.0, 0.0]
    promise, problems = check(ref, same)
    assert promise == "exact" and problems == ["round 0 item_scores: reference [0.0, 1.0], here [1.0, 0.0]"]
    other = json.loads(json.dumps(ref)) | {"environment": env | {"cpu_capability": "AVX512"}}
    other["rounds"][0] |= {"score": 0.55, "item_scores": [1.0, 0.0]}
    assert check(ref, other) == ("within intervals", [])
    other["rounds"][0]["score"] = 0.7
    promise, problems = check(ref, other)
    assert promise == "within intervals" and "outside the reference's interval" in problems[0]
    assert "cpu_capability: recorded AVX2, here AVX512" in problems[0]
