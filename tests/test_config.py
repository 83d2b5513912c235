"""The run configuration (ssaref.config): one option table, validation once, one default mechanism.

Issue 24's "nonsense accepted silently": a flag given explicitly (command line or TOML) where it has no effect is
refused with one ``error:`` line and exit 2, like a rule option the method does not take (docs/decisions.md D7)."""
import pytest

from ssaref import config
from ssaref import train as train_mod
from ssaref.options import Option, defaults, earlier_defaults, first_defaults, resolve
from ssaref.rules import RULES

SYN = ["--method", "bp", "--dataset", "synthetic", "--train-limit", "64", "--test-limit", "32", "--batch-size", "32",
       "--epochs", "1", "--no-progress", "--no-download"]


def _refused(argv, capsys):
    """``ssaref.train`` on ``argv``: must stop with exit 2 and one ``error:`` line before training; returns it."""
    with pytest.raises(SystemExit) as exc:
        train_mod.main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 2, (out, err)
    assert "final test_acc" not in out and "epoch 1/" not in out   # nothing trained
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


@pytest.mark.parametrize("flags, word", [
    (["--optimizer", "adam", "--momentum", "nan"], "--momentum"),
    (["--optimizer", "adamw", "--momentum", "0.5"], "--momentum"),
    (["--nesterov"], "--nesterov"),                                  # the default optimiser is adam
    (["--model", "mlp", "--width-mult", "0.5"], "--width-mult"),
    (["--model", "mlp", "--width-mult", "1.0"], "--width-mult"),    # refused even at its default value
    (["--model", "lenet", "--hidden", "8"], "--hidden"),
    (["--model", "lenet", "--activation", "tanh"], "--activation"),
    (["--sync-bn"], "--sync-bn"),
    (["--check-replicas", "1"], "--check-replicas"),
    (["--mpi-timeout", "5"], "--mpi-timeout"),
    (["--gamma", "0.1"], "--gamma"),                                 # an SSA option, BP takes none
    (["--threads", "1000000"], "--threads"),
    (["--out="], "--out"),
    (["--out", ""], "--out"),
    (["--resume="], "--resume"),
])
def test_flags_without_effect_and_bad_values_are_refused(flags, word, tmp_path, capsys):
    line = _refused(SYN + flags, capsys)
    assert word in line, line


@pytest.mark.parametrize("toml, word", [
    ('optimizer = "adam"\nmomentum = 0.5\n', "momentum"),
    ('model = "lenet"\nhidden = [8]\n', "hidden"),
    ("batch-size = 32\nbatch_size = 64\n", "batch_size"),
    ("threads = 1000000\n", "threads"),
    ('out = ""\n', "out"),
    ('model = "lenet"\nconv-save = "bogus"\n', "conv-save = 'bogus'"),   # a TOML value is held to the choices
    ('augment = "sometimes"\n', "augment"),
])
def test_config_file_is_held_to_the_same_rule(toml, word, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    line = _refused(SYN + ["--config", str(cfg)], capsys)
    assert word in line, line


def test_applicable_flags_and_resumed_settings_are_accepted(tmp_path, capsys):
    args = config.parse_args(SYN + ["--optimizer", "sgd", "--momentum", "0.5", "--nesterov", "--hidden", "8"])
    assert (args.momentum, args.nesterov, args.hidden) == (0.5, True, [8])
    assert config.parse_args(SYN + ["--model", "lenet", "--width-mult", "0.5"]).width_mult == 0.5
    assert config.parse_args(SYN + ["--threads", "3"]).threads == 3
    # a run file records momentum (0.9) with adam: its own setting, not one given now, so a resume takes it
    run = tmp_path / "r.h5"
    assert train_mod.main(SYN + ["--out", str(run), "--hidden", "8"]) == 0
    capsys.readouterr()
    args = config.parse_args(["--resume", str(run), "--epochs", "2"])
    assert (args.optimizer, args.momentum, args.hidden) == ("adam", 0.9, [8])


def test_check_argv_gives_the_error_line_without_training():
    assert config.check_argv(SYN) is None
    assert "--lr" in config.check_argv(SYN + ["--lr", "nan"])
    assert "/nonexistent" in config.check_argv(SYN + ["--data-dir", "/nonexistent"])
    assert config.check_argv(SYN + ["--method", "nope"]).startswith("error: unknown method")


# ------------------------------------------------------------------------------------------ the default history
def test_one_default_mechanism_from_the_declarations():
    opts = {"a": Option(int, 3, "", before={"0.2.0": 1, "0.3.0": 2}), "b": (str, "x", ""),
            "c": Option(bool, True, "", added="0.2.0")}
    assert defaults(opts) == {"a": 3, "b": "x", "c": True}
    assert defaults(opts, "0.1.0") == {"a": 1, "b": "x", "c": True}
    assert defaults(opts, "0.2.0") == {"a": 2, "b": "x", "c": True}
    assert defaults(opts, "0.3.0") == defaults(opts, "9.0.0") == defaults(opts)
    assert earlier_defaults(opts, "0.2.5") == {"a": 2} and earlier_defaults(opts, "0.3.0") == {}
    assert first_defaults(opts) == {"c": True}
    assert resolve(opts, {"b": "y"}, version="0.1.0") == {"a": 1, "b": "y", "c": True}
    # a variant naming an earlier version's defaults
    assert resolve(opts, {"b": "old"}, defaults_of={("b", "old"): "0.2.0"})["a"] == 2


def test_ssa_paper_variant_and_old_runs_take_the_declared_history():
    ssa = RULES["ssa"]
    paper = {"beta": 1e-3, "gamma": 1e-2, "orthogonality": "retract", "rank_reading": "every", "parity": False}
    got = ssa(ssa_variant="paper").options
    assert {k: got[k] for k in paper} == paper
    assert ssa(ssa_variant="paper", beta=0.5).options["beta"] == 0.5
    assert earlier_defaults(ssa.OPTIONS, "0.1.0") == paper
    assert earlier_defaults(ssa.OPTIONS, "0.2.0") == {"parity": False, "beta": 1e-2, "orthogonality": "retract-every"}
    assert earlier_defaults(ssa.OPTIONS, "0.3.0") == {"beta": 1e-2, "orthogonality": "retract-every"}   # D4.18
    assert earlier_defaults(ssa.OPTIONS, "0.4.0") == {}
    assert earlier_defaults(RULES["brsf"].OPTIONS, "0.1.0") == {"brsf_rng": "host"}
    filled = config.filled_config({"method": "ssa", "ssaref_version": "0.2.0", "rule_beta": None})
    assert filled["rule_parity"] is False and filled["rule_beta"] == 1e-2   # 0.2.0's default, not today's


def test_rule_options_become_flags_and_toml_keys(tmp_path):
    p = config.build_parser()
    dests = {a.dest for a in p._actions}
    for cls in RULES.values():
        assert {f"rule_{k}" for k in cls.OPTIONS} <= dests
    cfg = tmp_path / "c.toml"
    cfg.write_text('method = "ssa"\nssa-variant = "paper"\n')
    assert config.parse_args(["--config", str(cfg)]).rule_ssa_variant == "paper"


def test_train_runs_with_its_conv_save_and_restores_the_process_mode(monkeypatch):
    """``train(args)`` (not only the command line) runs with ``args.conv_save`` and leaves the mode as it was."""
    from ssaref.ops import conv

    seen = []
    monkeypatch.setattr(train_mod, "_train", lambda args, log: seen.append(conv.conv_save()))
    before = conv.conv_save()
    mode = "columns" if before != "columns" else "input"
    train_mod.train(train_mod.parse_args(["--model", "lenet", "--conv-save", mode]))
    assert seen == [mode] and conv.conv_save() == before
