"""The committed editor schema matches the channel types this repository ships."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from sophon_core.config import combined_schema
from sophon_core.plugins import channel_types, get_plugin_manager

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {"SOPHON_PLUGINS": "sms_twilio,whatsapp_twilio,default_agent"}


def test_committed_channels_schema_is_current():
    expected = combined_schema(channel_types(get_plugin_manager(env=SHIPPED)))
    committed = json.loads((REPO / "schemas" / "channels.schema.json").read_text())
    assert committed == expected, ("schemas/channels.schema.json is stale: run "
                                   "SOPHON_PLUGINS=sms_twilio,whatsapp_twilio,default_agent ./dev sophon schema --write "
                                   "schemas/channels.schema.json")


def test_editor_schema_accepts_the_repo_file_and_catches_a_bad_config():
    schema = json.loads((REPO / "schemas" / "channels.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    data = json.loads((REPO / "channels.json").read_text())
    assert data["$schema"] == "./schemas/channels.schema.json"
    assert list(validator.iter_errors(data)) == []
    data["channels"][0]["config"]["phoneNumber"] = "+1 234"
    data["channels"][0]["config"]["extra"] = 1
    assert len(list(validator.iter_errors(data))) == 2
