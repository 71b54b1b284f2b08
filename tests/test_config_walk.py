"""Every key of every config section fed hostile values: each is accepted by design or answered with exactly one
`error:` line naming that key, exit status 2, no traceback, no run folder. And the cases that once got through."""

import dataclasses

import pytest

from clcpmt.cli import main
from clcpmt.config import Config, ConfigError, load_config

HOSTILE = ["0", "-1", "1000000000000", "nan", "inf", "abc", "", "[]", "[x, x]"]


def every_key(cls=Config, prefix=""):
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or f.name in ("data", "model", "method", "train"):
            yield from every_key(type(getattr(cls(), f.name)), f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


KEYS = list(every_key())


def test_the_walk_covers_every_section():
    assert len(KEYS) == sum(len(dataclasses.fields(type(getattr(Config(), s)))) for s in ("data", "model", "method",
                                                                                           "train")) + 1  # fmt: skip
    assert len(KEYS) * len(HOSTILE) >= 500


PATHS = ["0", "-1", "1000000000000", "nan", "inf", "abc", ""]  # a path may be any name; "" = not given
# The hostile values each key accepts, by design (anything else must be an error naming the key). A value a key
# accepts here is either meaningful (0 = off, a huge weight) or is checked where it is used (a path, a backbone
# name: before any data is read; a labeled count: against the training split).
ACCEPTED = {
    "run_dir": PATHS[:-1], "data.images": PATHS, "data.labels": PATHS, "data.splits": PATHS, "data.train_list": PATHS,
    "data.val_list": PATHS, "data.test_list": PATHS, "data.cache_dir": PATHS,
    "data.classes": ["[]"],  # the data set's own class names
    "data.labeled": ["1000000000000"],  # a count (> 1): checked against the training split
    "data.labeled_balance": ["0"], "data.num_workers": ["0"], "data.synthetic_contrast": ["1000000000000"],
    "data.seed": ["0"], "train.seed": ["0"],
    "model.backbone": PATHS[:-1],  # a timm name, checked before any data is read
    "model.pretrained": PATHS[:-1],  # imagenet, none or a file, checked before any data is read
    "model.mean": ["[]"], "model.std": ["[]"],  # the weights' own statistics
    "model.drop_rate": ["0"], "method.ema_decay": ["0"], "method.tau_min": ["0"], "method.momentum": ["0"],
    "method.lambda_mt": ["0", "1000000000000"], "method.lambda_sde": ["0", "1000000000000"],
    "method.lambda_pl": ["0", "1000000000000"], "method.lambda_fair": ["0", "1000000000000"],
    "method.balance_strength": ["0", "1000000000000"], "method.debias": ["0", "1000000000000"],
    "method.rampup_epochs": ["0", "-1", "1000000000000"],  # 0: none; -1: 30 % of the schedule
    "method.sde_temperature": ["1000000000000"], "method.sde_bank": ["0"], "method.debias_momentum": ["0"],
    "method.warmup_epochs": ["0", "1000000000000"],
    "train.epochs": ["1000000000000"], "train.lr": ["1000000000000"],
    "train.steps_per_epoch": ["0", "1000000000000"],  # 0: one pass over the unlabeled images
    "train.weight_decay": ["0", "1000000000000"],
}  # fmt: skip


def test_the_accepted_table_names_only_real_keys():
    assert set(ACCEPTED) <= set(KEYS)


@pytest.mark.parametrize("key", KEYS)
def test_each_hostile_value_is_accepted_or_one_error_naming_the_key(key, tmp_path, capsys):
    accepted = []
    for value in HOSTILE:
        run_dir = tmp_path / "run"
        over = [f"--run_dir={run_dir}"] if key != "run_dir" else []
        code = main(["train", "--print-config", *over, f"--{key}={value}"])  # any other exception fails the test
        err = capsys.readouterr().err
        assert code in (0, 2), (key, value)
        if code == 0:
            accepted.append(value)
        else:
            lines = [line for line in err.splitlines() if line.startswith("error:")]
            assert len(lines) == 1 and key in lines[0], (key, value, err)
        assert not run_dir.exists()
    assert accepted == ACCEPTED.get(key, []), f"{key} accepts {accepted}; by design: {ACCEPTED.get(key, [])}"


@pytest.mark.parametrize(
    "over, message",
    [
        (["--data.classes=[a, a, b, c]"], r"data\.classes must be distinct, non-empty names; .*repeated or empty: a"),
        (["--train.devices=-1"], r"train\.devices must be auto, a count in \[1, 1024\] or distinct device"),
        (["--train.devices=0"], r"train\.devices must be auto, a count in \[1, 1024\] .*got '0'"),
        (["--train.devices=1000000000000"], r"train\.devices must be .*got '1000000000000'"),
        (["--train.devices=0,0"], r"train\.devices must be .*got '0,0'"),
        (["--train.seed=-1"], r"train\.seed must be in \[0, 4294967295\]; got -1"),
        (["--data.seed=-1"], r"data\.seed must be in \[0, 4294967295\]; got -1"),
        (["--method.tau=1.5"], r"^method\.tau must be in \[0, 1\]; got 1\.5"),
        (["--method.tau=nan"], r"^method\.tau must be a finite number in \[0, 1\]; got nan"),
        (["--method.tau_min=0.97"], r"^method\.tau_min must be a float in \[0, method\.tau=0\.95\]; got 0\.97"),
        (["--data.image_size=0"], r"^data\.image_size must be in \[8, 2048\]; got 0$"),
        (["--train.epochs=0"], r"^train\.epochs must be >= 1; got 0$"),
        (["--method.rampup_epochs=nan"], r"^method\.rampup_epochs must be a finite number; got nan"),
        (["--train.lr=inf"], r"^train\.lr must be a finite number > 0; got inf"),
        (["--run_dir="], r"^run_dir must not be empty"),
    ],
)
def test_the_settings_that_once_got_through_name_their_key(over, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, over)


def test_accepted_device_settings():
    for devices in ("auto", "1", "2", "0,1"):
        assert load_config(None, [f"--train.devices={devices}"]).train.devices
