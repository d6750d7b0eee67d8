"""One blocking vocabulary: project settings, the wire and the engine agree on it."""

from __future__ import annotations

import pytest

from linkage_unit.matching import MatchSettings
from protocol import serde
from protocol.errors import ConfigurationError, MatchingError
from protocol.messages import BlockingMode, ProjectSettings


@pytest.mark.parametrize("mode", list(BlockingMode))
def test_every_mode_round_trips_through_the_wire_and_reaches_the_engine(
    mode: BlockingMode,
) -> None:
    settings = ProjectSettings(
        project_id="p1", members=("moj", "dfe"), schema_fingerprint=bytes(32), blocking=mode.value
    )
    assert settings.blocking is mode
    back = serde.project_settings_from_proto(serde.project_settings_to_proto(settings))
    assert back == settings and back.fingerprint == settings.fingerprint
    assert MatchSettings(blocking=back.blocking).blocking is mode


def test_the_fingerprint_of_a_default_project_is_unchanged() -> None:
    settings = ProjectSettings(
        project_id="p1", members=("moj", "dfe"), schema_fingerprint=bytes(32)
    )
    assert '"blocking":"lsh"' in settings.canonical_json()


def test_unknown_modes_are_refused_everywhere() -> None:
    with pytest.raises(ConfigurationError, match="blocking must be one of 'auto', 'lsh', 'none'"):
        ProjectSettings(
            project_id="p1", members=("moj", "dfe"), schema_fingerprint=bytes(32), blocking="magic"
        )
    with pytest.raises(MatchingError, match="blocking must be one of"):
        MatchSettings(blocking="magic")
