"""Service settings: strict like pipeline specs, flags override the file, limits parse."""

from __future__ import annotations

import pytest

from curation.errors import SpecError
from curation.service.settings import load_settings


def test_file_then_flags_and_paths_resolved(tmp_path):
    config = tmp_path / "service.yaml"
    config.write_text("port: 9000\npublic_optout_limit: 5/minute\nrequest_threads: 2\ndata_root: data\n")
    settings = load_settings(config, port=9100, host=None)
    assert settings.port == 9100 and settings.host == "127.0.0.1" and settings.request_threads == 2
    assert settings.optout_limit() == (5, 60.0) and settings.data_root.is_absolute()


@pytest.mark.parametrize(
    "text, problem",
    [("prot: 1\n", "prot"), ("public_optout_limit: lots\n", "COUNT/"), ("request_threads: 0\n", "request_threads"),
     ("- a list\n", "mapping")],
)  # fmt: skip
def test_bad_settings_name_the_file_and_key(tmp_path, text, problem):
    config = tmp_path / "service.yaml"
    config.write_text(text)
    with pytest.raises(SpecError, match=problem) as raised:
        load_settings(config)
    assert str(config) in str(raised.value)
