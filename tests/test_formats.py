"""Formats before values (`kern_telemetry_client/formats.py`, applied by the client and the pipeline): every
rule of the README's table, with its example, and the values the rules must leave alone."""

from __future__ import annotations

import pytest
from kern_telemetry_client.formats import free_text, sdk_version
from kern_telemetry_client.values import INVALID, MAX_RAW_LENGTH, REDACTED, clean_value


@pytest.mark.parametrize(
    "raw, stored",
    [
        ("2.4.0", "2.4.0"),
        ("2.4.0+g1a2b3c", "2.4.0"),
        ("v2.4.0-rc.1+build.7", "2.4.0-rc.1"),
        ("2.4.0b1", "2.4.0b1"),
        ("2.4.0.dev3+local.7", "2.4.0.dev3"),
        ("1.2", "1.2"),
        ("2.4.0.1", "2.4.0.1"),
        ("2.4.0+user@example.com", "2.4.0"),  # whatever the build part holds, it is dropped
        ("main", INVALID),
        ("latest", INVALID),
        ("2.4.0 (dev)", INVALID),
        ("9" * 50, INVALID),
    ],
)
def test_an_sdk_version_is_a_version_without_its_local_part(raw, stored):
    assert sdk_version(raw) == stored
    assert clean_value(raw, "sdk_version") == stored


@pytest.mark.parametrize(
    "raw, stored",
    [
        ("ft:gpt-4o-mini:acme-corp:support:AbC123", "ft:gpt-4o-mini"),
        ("ft:gpt-4o-mini-2024-07-18:acme::9aBcDeF", "ft:gpt-4o-mini-2024-07-18"),
        ("curie:ft-acme-2023-01-01-00-00-00", "ft:curie"),
        (
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-5-sonnet-20240620-v1:0",
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
        ),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0",
            "us.anthropic.claude-3-5-sonnet-20240620-v1:0",
        ),
        ("arn:aws:bedrock:us-east-1:123456789012:provisioned-model/a1b2c3d4e5", "aws:bedrock:provisioned-model"),
        (
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/x9y8",
            "aws:bedrock:application-inference-profile",
        ),
        ("arn:aws:sagemaker:eu-west-1:123456789012:endpoint/acme-llm", "aws:sagemaker:endpoint"),
        ("projects/acme-123/locations/us-central1/publishers/google/models/gemini-2.5-pro", "google/gemini-2.5-pro"),
        ("projects/acme-123/locations/us-central1/endpoints/1234567890", "gcp:endpoints"),
        ("publishers/anthropic/models/claude-3-5-sonnet@20240620", "anthropic/claude-3-5-sonnet"),
        ("acme-corp/support-llama:8b", "support-llama:8b"),
        ("hf.co/SomeUser/Llama-2-7B-GGUF:Q4_K_M", "Llama-2-7B-GGUF:Q4_K_M"),
        ("openai/gpt-oss-120b", "openai/gpt-oss-120b"),
        ("meta-llama/Llama-3.3-70B-Instruct", "meta-llama/Llama-3.3-70B-Instruct"),
        ("gpt-5.2", "gpt-5.2"),
        ("qwen2.5:7b", "qwen2.5:7b"),
        ("us.anthropic.claude-sonnet-4-5-v1:0", "us.anthropic.claude-sonnet-4-5-v1:0"),
    ],
)
def test_a_model_id_loses_its_account_project_organisation_and_endpoint(raw, stored):
    assert free_text(raw) == stored
    for field in ("model_id", "model_provider", "model_name", "db_type", "interface", ""):  # every free-text field
        assert clean_value(raw, field) == stored


def test_a_long_arn_is_normalised_before_the_length_check_and_a_longer_one_is_invalid_at_once():
    arn = "arn:aws:bedrock:eu-central-1:123456789012:provisioned-model/" + "a1b2c3d4" * 12
    assert 100 < len(arn) <= MAX_RAW_LENGTH and clean_value(arn, "model_name") == "aws:bedrock:provisioned-model"
    longer = arn + "a1b2c3d4" * 30
    assert len(longer) > MAX_RAW_LENGTH and clean_value(longer, "model_id") == INVALID == free_text(longer)


@pytest.mark.parametrize(
    "raw",
    [
        "http://localhost:11434",
        "https://acme.openai.azure.com/openai/deployments/x",
        "postgres://u:pw@db/x",
        "/home/carol/models/x.gguf",
        "~/models/x.gguf",
        "./models/x.gguf",
        "C:\\Users\\carol\\x.gguf",
        "C:/Users/carol",
        "user@example.com",
        "carol@acme-intranet",
        "acme-corp.openai.azure.com",
        "api.acme-corp.com:8443",
        "bedrock-runtime.us-east-1.amazonaws.com",
        "us-central1-aiplatform.googleapis.com",
        "foo.internal",
        "x.local",
        "nas.lan",
        "build.corp",
        "ollama.ml.svc",
        "localhost:11434",
        "10.1.2.3",
        "model-192.168.1.10",
        "10.0.0.7:11434",
        "fe80::1ff:fe23:4567:890a",
        "::1",
        "::ffff:10.0.0.1",
        "[::1]:8080",
        "2001:db8:0:0:0:ff00:42:8329",
        "123e4567-e89b-12d3-a456-426614174000",
        "123456789012",
        "ft:10.0.0.7:acme::x",
        "carol@acme-intranet@1",
    ],
)
def test_urls_paths_addresses_hosts_and_identifiers_are_redacted(raw):
    assert free_text(raw) == REDACTED == clean_value(raw, "model_name") == clean_value(raw, "model_id")


@pytest.mark.parametrize(
    "raw",
    [
        "gpt-4.1",
        "gpt-4o-mini",
        "claude-3.5-sonnet",
        "llama3.1:8b",
        "gemini-2.5-pro",
        "phi-3.5-mini",
        "o3-mini",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "claude-3-5-sonnet-v2@20241022",
        "tiny.en",
        "model.Q4_K_M.gguf",
    ],
)
def test_public_model_ids_with_dots_colons_and_versions_are_no_hosts_addresses_or_e_mails(raw):
    assert free_text(raw) == raw
