"""Flags naming a grid of mel resolutions, shared by the entry points that take one."""

from __future__ import annotations

from absl import app, flags

from tftag import features

FLAGS = flags.FLAGS


def define_mel_flags(duration_name: str = "duration") -> None:
    """Defines --sr, --n_mels, --hop_factors, --compressions and the crop duration flag."""
    flags.DEFINE_list("sr", ["12000", "16000"], "Sample rates in Hz (paper: 12000,16000; any "
                      ">= 8000).")
    flags.DEFINE_list("n_mels", [str(m) for m in features.PAPER_N_MELS],
                      "Mel band counts (paper: 128,96,48,32,24,16,8; any 4..256).")
    flags.DEFINE_list("hop_factors", [str(k) for k in features.PAPER_HOP_FACTORS],
                      "Hop factors k (hop 256*k) (paper: 1,2,3,4,5,10). Only hop 1 is stored; "
                      "every k is derived on read.")
    flags.DEFINE_list("compressions", list(features.PAPER_COMPRESSIONS),
                      f"Compressions: any of {', '.join(features.COMPRESSIONS)}. Derived on read.")
    flags.DEFINE_float(duration_name, features.DEFAULT_DURATION, "Centred crop in seconds "
                       "(zero-padded if shorter).")
    flags.DEFINE_list("resolutions", [], "Explicit resolutions by name (e.g. "
                      "sr16000-mel96-hop1-log,sr16000-mel32-hop4-log) instead of the grid of "
                      "--sr × --n_mels × --hop_factors × --compressions.")


def _ints(name: str) -> list[int]:
    try:
        return [int(v) for v in getattr(FLAGS, name)]
    except ValueError:
        raise app.UsageError(f"--{name} must be comma-separated integers, got "
                             f"{','.join(getattr(FLAGS, name))!r}") from None


def mel_configs(duration_name: str = "duration") -> list[features.MelConfig]:
    """The MelConfig grid of the flags, with errors naming the flag and the allowed values."""
    duration = getattr(FLAGS, duration_name)
    if FLAGS.resolutions:
        try:
            return [features.MelConfig.from_name(n, duration) for n in FLAGS.resolutions]
        except (ValueError, TypeError) as e:
            raise app.UsageError(f"--resolutions: {e}") from None
    values = {"sr": _ints("sr"), "n_mels": _ints("n_mels"), "hop_factors": _ints("hop_factors"),
              "compressions": list(FLAGS.compressions)}
    fields = {"sr": "sr", "n_mels": "n_mels", "hop_factors": "hop_factor",
              "compressions": "compression"}
    for name, vals in values.items():
        if not vals:
            raise app.UsageError(f"--{name} is empty")
        for v in vals:
            try:
                features.MelConfig(**{"sr": 16000, "n_mels": 96, "hop_factor": 1,
                                      "compression": "log", "duration": duration, fields[name]: v})
            except (ValueError, TypeError) as e:
                raise app.UsageError(f"--{name}: {e}") from None
    return features.grid(values["sr"], values["n_mels"], values["hop_factors"],
                         values["compressions"], duration)
