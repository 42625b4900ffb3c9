"""profiler/fidelity.py: exact softmax through a mixer's own projections, the error measures, and
the records `zoo fidelity` writes (read back by reports)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import profiler.fidelity as fidelity
from profiler.cases import format_label
from profiler.fidelity import exact_softmax_output, fidelity_errors, missing_projections, run_fidelity
from reports import read_profile
from zoo import create_mixer, get_spec, list_mixers
from zoo.errors import ZooValueError
from zoo.reference.dense import dense_attention


def _tiny(name: str, dtype=torch.float64):
    config = create_mixer(name).Config.tiny()
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return create_mixer(name, dtype=dtype, **fields).eval()


def test_exact_output_of_softmax_is_the_softmax_mixer():
    mixer = _tiny("softmax")
    x = torch.randn(2, 11, mixer.dim, dtype=torch.float64)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 7:] = False
    for causal in (False, True):
        with torch.no_grad():
            torch.testing.assert_close(exact_softmax_output(mixer, x, mask, causal), mixer(x, mask, causal=causal))
        rel, cos = fidelity_errors(mixer, x, mask, causal)
        assert rel < 1e-12 and cos == pytest.approx(1.0, abs=1e-12)


def test_exact_output_matches_the_dense_oracle_through_the_projections():
    mixer = _tiny("softmax")
    x = torch.randn(1, 9, mixer.dim, dtype=torch.float64)
    H, D = mixer.heads, mixer.dim
    q, k, v = (proj(x).view(1, 9, H, D // H).transpose(1, 2) for proj in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    allowed = torch.ones(1, 1, 9, 9, dtype=torch.bool)
    expected = mixer.out_proj(dense_attention(q, k, v, allowed).transpose(1, 2).reshape(1, 9, D))
    with torch.no_grad():
        torch.testing.assert_close(exact_softmax_output(mixer, x), expected.detach())


def test_errors_are_relative_frobenius_and_row_cosine():
    mixer = _tiny("softmax")
    x = torch.randn(1, 8, mixer.dim, dtype=torch.float64)
    with torch.no_grad():
        exact = exact_softmax_output(mixer, x)
    delta = torch.zeros_like(exact)
    delta[0, 3] = exact[0, 3]  # row 3 doubled: error ||row 3|| / ||all rows||, that row's cosine stays 1
    mixer.forward = lambda x, mask=None, *, causal=False: exact + delta
    rel, cos = fidelity_errors(mixer, x)
    assert rel == pytest.approx(float(exact[0, 3].norm() / exact.norm()), rel=1e-12)
    assert cos == pytest.approx(1.0, abs=1e-12)
    mixer.forward = lambda x, mask=None, *, causal=False: -exact
    rel, cos = fidelity_errors(mixer, x)
    assert rel == pytest.approx(2.0) and cos == pytest.approx(-1.0)


def test_every_approximating_mixer_runs_and_its_records_read_back(tmp_path):
    names = list_mixers(approximates_softmax=True)
    assert names, "no registered mixer declares approximates_softmax"
    out = tmp_path / "fidelity.jsonl"
    records = run_fidelity(lengths=[24], seeds=2, overrides={"dim": 16, "heads": 2}, out=out)
    assert {r["mixer"] for r in records} == set(names) and len(records) == len(names)
    for r in records:
        assert r["status"] == "ok", r
        assert r["n_seeds"] == 2 and r["rel_error"] >= 0 and -1 <= r["cosine"] <= 1 + 1e-9
        assert r["dim"] == 16 and r["heads"] == 2
        # the label names the switches the spec turns off for this panel (e.g. a conv skip)
        expected = format_label(r["mixer"], dict(get_spec(r["mixer"]).fidelity_overrides))
        assert r["label"] == expected
        assert all(r["config"][k] == v for k, v in get_spec(r["mixer"]).fidelity_overrides)
    # read back by reports: one header, every record, no damage
    profile = read_profile(out)
    assert len(profile.headers) == 1 and profile.headers[0]["settings"]["kind"] == "fidelity"
    assert len(profile.fidelity) == len(records) and not profile.bad_lines and profile.cells.empty


def test_a_mixer_without_projections_is_an_error_record(monkeypatch):
    real = fidelity.create_mixer

    def without_projections(name, **kw):
        mixer = real(name, **kw)
        del mixer.v_proj
        return mixer

    monkeypatch.setattr(fidelity, "create_mixer", without_projections)
    (record,) = run_fidelity(["softmax"], lengths=[8], seeds=1, overrides={"dim": 16, "heads": 2})
    assert record["status"] == "error" and "v_proj" in record["reason"] and record["rel_error"] is None


def test_unsupported_cells_are_recorded_and_the_sweep_goes_on():
    names = [n for n in list_mixers(approximates_softmax=True, causal=False)]
    if not names:
        pytest.skip("every approximating mixer has a causal variant")
    records = run_fidelity([names[0], "softmax"], lengths=[8], seeds=1, causal=True, overrides={"dim": 16, "heads": 2})
    assert records[0]["status"] == "unsupported" and "causal" in records[0]["reason"]
    assert records[1]["status"] == "ok" and records[1]["rel_error"] < 1e-5


def test_user_errors_are_raised_before_anything_is_written(tmp_path):
    out = tmp_path / "f.jsonl"
    for kwargs, message in (
        ({"mixers": ["sofmax"]}, "Did you mean 'softmax'"),
        ({"mixers": ["softmax"], "seeds": 0}, "seeds: expected an integer >= 1"),
        ({"mixers": ["softmax"], "lengths": "8.."}, "lengths"),
        ({"mixers": ["softmax"], "dtype": "fp8"}, "dtype"),
    ):
        with pytest.raises(ZooValueError, match=message):
            run_fidelity(out=out, **kwargs)
    assert not out.exists()


def test_missing_projections_lists_what_is_absent():
    assert missing_projections(torch.nn.Linear(2, 2)) == ["q_proj", "k_proj", "v_proj", "out_proj"]
    assert missing_projections(_tiny("softmax")) == []
    assert get_spec("softmax").approximates_softmax is False
