import pytest

from clcpmt.cli import main
from clcpmt.config import (
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    parse_overrides,
    resolve_config,
    save_config,
    to_dict,
)


def test_defaults_file_then_command_line_wins(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  name: mean_teacher\n  lambda_sde: 0.5\ntrain:\n  epochs: 7\n")
    cfg = load_config(path, ["--train.epochs=3", "--data.classes", "[A, B]"])
    assert cfg.method.name == "mean_teacher" and cfg.method.lambda_sde == 0.5
    assert cfg.train.epochs == 3  # the command line wins over the file
    assert cfg.data.classes == ("A", "B")
    assert cfg.method.tau == Config().method.tau  # untouched keys keep their defaults


def test_unknown_key_in_file_names_file_key_and_close_match(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  lamda_sde: 0.5\n")
    with pytest.raises(
        ConfigError, match=r"c\.yaml: unknown key 'method\.lamda_sde'; did you mean 'method\.lambda_sde'"
    ):
        load_config(path)


def test_unknown_key_on_command_line():
    with pytest.raises(ConfigError, match=r"command line: unknown key 'train\.epoch'; did you mean 'train\.epochs'"):
        load_config(None, ["--train.epoch=3"])


def test_bad_type_and_bad_value_name_the_key():
    with pytest.raises(ConfigError, match=r"train\.epochs must be int; got 'many'"):
        load_config(None, ["--train.epochs=many"])
    with pytest.raises(ConfigError, match=r"method\.name must be one of .*got 'clcpmt' \(did you mean 'clcp_mt'\?\)"):
        load_config(None, ["--method.name=clcpmt"])
    with pytest.raises(ConfigError, match=r"method\.tau_min must be a float in \[0, method\.tau=0\.95\].*got 0\.97"):
        load_config(None, ["--method.tau_min=0.97"])
    with pytest.raises(ConfigError, match=r"method\.tau_negative must be in \[0\.5, 1\].*got 0\.3"):
        load_config(None, ["--method.tau_negative=0.3"])
    with pytest.raises(ConfigError, match="data.dataset=folder needs data.images"):
        load_config(None, ["--data.dataset=folder"])
    with pytest.raises(ConfigError, match="expected --section.key=value"):
        parse_overrides(["epochs=3"])
    with pytest.raises(ConfigError, match=r"method\.student_view must be one of"):
        load_config(None, ["--method.student_view=weakest"])
    with pytest.raises(ConfigError, match=r"method\.class_balance must be one of .*got 'logit_adjusted'.*logit_adjust"):
        load_config(None, ["--method.class_balance=logit_adjusted"])
    with pytest.raises(ConfigError, match=r"method\.balance_strength must be >= 0; got -1"):
        load_config(None, ["--method.balance_strength=-1"])
    with pytest.raises(ConfigError, match=r"method\.sde_bank must be in \[0, 1000000\] \(0: no memory bank\); got -5"):
        load_config(None, ["--method.sde_bank=-5"])
    with pytest.raises(ConfigError, match=r"data\.synthetic_contrast must be > 0; got 0"):
        load_config(None, ["--data.synthetic_contrast=0"])


def test_saved_config_reads_back_identically(tmp_path):
    cfg = load_config(None, ["--method.name=fixmatch", "--data.labeled=0.1"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert config_from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("name", ["demo", "isic2018_cpu", "isic2018_cpu64", "isic2018_densenet121_224"])
def test_packaged_configs_load(name):
    cfg = load_config(resolve_config(name))
    assert cfg.method.name == "clcp_mt"


def test_cli_reports_config_errors_in_one_line(capsys):
    assert main(["train", "--config", "demo", "--train.epoch=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'train.epoch'" in err[0]
    assert main(["train", "--config", "nonexistent"]) == 2
    assert "packaged configs: demo" in capsys.readouterr().err


def test_yaml_syntax_errors_name_the_file_line_or_key(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("train:\n  epochs: 3\n   lr: 0.1\n")  # lr indented one space too far
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}, line 3, column 6: not valid YAML" in err[0]
    assert main(["train", "--config", "demo", "--data.classes", "[a, b"]) == 2
    assert "command line: --data.classes=[a, b, line 1, column 6: not valid YAML" in capsys.readouterr().err
    grid = tmp_path / "g.yaml"
    grid.write_text("methods: [a\n")
    assert main(["bench", str(grid)]) == 2
    assert f"{grid}, line 2" in capsys.readouterr().err
    grid.write_text("- supervised\n")
    assert main(["bench", str(grid)]) == 2
    assert f"{grid}: expected a mapping of grid keys" in capsys.readouterr().err


def test_rampup_default_scales_with_the_schedule():
    from clcpmt.config import rampup_epochs

    assert rampup_epochs(load_config(None, ["--train.epochs=100"])) == pytest.approx(30.0)  # method.md: 30 of 100
    assert rampup_epochs(load_config(None, ["--train.epochs=15"])) == pytest.approx(4.5)
    assert rampup_epochs(load_config(None, ["--train.epochs=15", "--method.rampup_epochs=2"])) == 2.0
    assert rampup_epochs(load_config(None, ["--method.rampup_epochs=0"])) == 0.0  # no ramp-up
    with pytest.raises(ConfigError, match=r"method\.rampup_epochs must be >= 0 .* or -1 .*got -3"):
        load_config(None, ["--method.rampup_epochs=-3"])


def test_teacher_bn_is_a_checked_choice():
    assert load_config(None, []).method.teacher_bn == "ema"
    with pytest.raises(ConfigError, match=r"method\.teacher_bn must be one of ema, batch; got 'train'"):
        load_config(None, ["--method.teacher_bn=train"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("--data.labeled=1.5", r"data\.labeled must be a fraction in \(0, 1\] or a whole count .* got 1\.5"),
        ("--data.labeled=0", r"data\.labeled must be .*got 0"),
        ("--train.lr=-0.1", r"train\.lr must be > 0; got -0\.1"),
        ("--data.batch_labeled=0", r"data\.batch_labeled must be in \[1, 8192\]; got 0"),
        ("--data.batch_unlabeled=0", r"data\.batch_unlabeled must be in \[1, 8192\]; got 0"),
        ("--train.steps_per_epoch=-5", r"train\.steps_per_epoch must be >= 0; got -5"),
        ("--data.num_workers=-1", r"data\.num_workers must be in \[0, 256\]; got -1"),
        ("--method.debias=-1", r"method\.debias must be >= 0 \(0: off\); got -1"),
        ("--method.debias_momentum=1", r"method\.debias_momentum must be in \[0, 1\); got 1"),
        ("--method.debias_target=labeled", r"method\.debias_target=labeled acts only with method\.debias > 0"),
        ("--method.debias_target=prior", r"method\.debias_target.*uniform, labeled"),
    ],
)
def test_bad_numbers_stop_at_the_config_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_debias_is_for_the_methods_that_pseudo_label_from_the_teacher():
    assert load_config(None, ["--method.debias=1"]).method.debias == 1.0  # clcp_mt
    with pytest.raises(ConfigError, match=r"method\.debias is for .* \(mt_capr, clcp_mt\); got method\.name=fixmatch"):
        load_config(None, ["--method.debias=1", "--method.name=fixmatch"])


def test_labeled_count_and_fraction_accepted():
    assert load_config(None, ["--data.labeled=1.0"]).data.labeled == 1.0  # all labels
    assert load_config(None, ["--data.labeled=250"]).data.labeled == 250  # a count of images


def test_scientific_notation_is_a_float():
    assert load_config(None, ["--train.lr=1e-4"]).train.lr == 1e-4  # YAML 1.1 alone would read a string
    with pytest.raises(ConfigError, match=r"train\.lr must be float; got 'fast'"):
        load_config(None, ["--train.lr=fast"])


def test_the_configuration_reference_is_up_to_date():
    from pathlib import Path

    from clcpmt.bench import reference

    docs = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert docs.read_text() == reference(), "regenerate docs/configuration.md (the command is in its first lines)"
    for key in ("`method.tau_min`", "`train.devices`", "`data.classes`", "`extra_runs`", "`jobs`"):
        assert key in docs.read_text()


def test_every_dataset_name_has_a_reader_and_every_reader_a_name():
    from clcpmt.config import DATASETS, FILE_DATASETS
    from clcpmt.data.sources import SOURCES

    assert set(SOURCES) == set(DATASETS) and set(FILE_DATASETS) <= set(DATASETS)


def test_print_config_is_the_apis_run_config(tmp_path, capsys):
    import json

    from clcpmt import run_config
    from clcpmt.cli import main
    from clcpmt.config import to_dict

    args = ["--config", "demo", "--train.epochs=3", f"--run_dir={tmp_path / 'r'}"]
    assert main(["train", *args, "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = json.loads(json.dumps(to_dict(run_config("demo", tmp_path / "r", overrides=args[2:3]))))
    assert printed == expected and printed["train"]["epochs"] == 3 and printed["run_dir"] == str(tmp_path / "r")
