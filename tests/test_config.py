import pytest

from jobs.cli import parse
from toolformer.config import config_hash, load_config

DEFAULT = "jobs/configs/default.yaml"


def test_defaults_are_the_papers():
    cfg = load_config(DEFAULT)
    assert cfg.tool_params("Calendar").tau_s == 0.05 and cfg.tool_params("Calendar").tau_f == 1.0
    assert (cfg.tool_params("Calendar").top_k, cfg.tool_params("Calendar").num_samples) == (5, 5)
    calc = cfg.tool_params("calculator")
    assert (calc.tau_s, calc.top_k, calc.num_samples, calc.tau_f) == (0.0, 20, 10, 0.5)
    assert cfg.tool_params("MT").tau_f == 0.5
    assert cfg.annotate.no_result_form == "arrow"


def test_overrides_and_hash():
    a = load_config(DEFAULT)
    b = load_config(DEFAULT, ["corpus.limit=7", "annotate.per_tool.Calendar.tau_f=2.0", "name=other"])
    assert b.corpus.limit == 7 and b.tool_params("Calendar").tau_f == 2.0 and b.output_dir == "runs/other"
    assert config_hash(a) != config_hash(b)
    assert config_hash(a) == config_hash(load_config(DEFAULT, ["name=renamed"]))  # the name changes no output


def test_bad_keys_and_values_are_clear_errors(capsys):
    with pytest.raises(Exception, match="nosuchkey"):
        load_config(DEFAULT, ["corpus.nosuchkey=1"])
    with pytest.raises(SystemExit):
        parse("x", ["--config", DEFAULT, "corpus.limit=notanumber"])
    assert "corpus.limit" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("x", ["--config", DEFAULT, "justaword"])


@pytest.mark.parametrize("key, bad, valid", [
    ("annotate.call_syntax", "constraint", "free, constrained"),
    ("annotate.no_result_form", "empty", "arrow, bare"),
    ("engine.backend", "transformers", "vllm, hf"),
])
def test_settings_with_fixed_values_fail_at_load_naming_the_valid_ones(key, bad, valid, capsys):
    with pytest.raises(ValueError, match=rf"unknown value '{bad}' for {key}; valid: {valid}"):
        load_config(DEFAULT, [f"{key}={bad}"])
    with pytest.raises(SystemExit):  # the jobs' command line says the same, without a traceback
        parse("x", ["--config", DEFAULT, f"{key}={bad}"])
    assert f"valid: {valid}" in capsys.readouterr().err
    for good in valid.split(", "):
        load_config(DEFAULT, [f"{key}={good}"])


def test_an_object_store_run_needs_a_lease_margin_longer_than_a_write_window():
    """A conditional write on S3 or GCS lands up to WRITE_WINDOW_S after its fence check (bounded clients): a
    margin that short would let a driver past its deadline land a write after a takeover."""
    from toolformer.run.conditional import CONNECT_TIMEOUT_S, MAX_ATTEMPTS, READ_TIMEOUT_S, REQUEST_BOUND_S, WRITE_WINDOW_S

    assert REQUEST_BOUND_S >= MAX_ATTEMPTS * (CONNECT_TIMEOUT_S + READ_TIMEOUT_S) and WRITE_WINDOW_S >= 2 * REQUEST_BOUND_S
    ok = load_config(None, ["output_dir=s3://b/run"])  # the defaults: a 30 s margin (a quarter of 120 s)
    assert ok.shards.lease_ttl_s == 120
    with pytest.raises(ValueError, match=r"lease_margin_s is 15 s .* up to 26 s after its fence check"):
        load_config(None, ["output_dir=s3://b/run", "shards.lease_margin_s=15"])
    with pytest.raises(ValueError, match="gs://b/run"):
        load_config(None, ["output_dir=gs://b/run", "shards.lease_ttl_s=60", "shards.lease_heartbeat_s=5"])
    load_config(None, ["output_dir=/tmp/run", "shards.lease_ttl_s=4"])  # a local disk: the write is under the lock
