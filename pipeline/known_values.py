"""The curated registry of well-known values, admitted from the start: what many users of the SDK send (model
providers and classes, public model families, database classes, the SDK's own flags, released SDK
versions). Any other value of a free-text field is stored only once it has been seen from k distinct
sessions (`pipeline/admission.py`); until then its runs count under `(rare)`.

Versioned with the code: a value added here is admitted from the release that adds it. Entries are exact
names or, for model ids and versions, patterns of public families (a family admits its dated and sized
variants, `gpt-4o-2024-08-06`, `llama3.2:1b`), never an organisation's or a user's own name.
"""

from __future__ import annotations

import re

from kern_telemetry_client import contract
from kern_telemetry_client.values import MAX_VALUE_LENGTH

PROVIDERS = frozenset(
    {
        "openai",
        "anthropic",
        "google",
        "vertexai",
        "groq",
        "ollama",
        "mistral",
        "aws",
        "azure",
        "azure_openai",
        "cohere",
        "deepseek",
        "xai",
        "together",
        "fireworks",
        "openrouter",
        "perplexity",
        "huggingface",
        "nvidia",
        "ibm",
        "litellm",
        "lmstudio",
        "vllm",
        "cerebras",
        "sambanova",
        "deepinfra",
        "nebius",
        "meta",
        "dashscope",
        "siliconflow",
        "moonshot",
        "internlm",
        "llamacpp",
        "portkey",
        "langdb",
        "aimlapi",
        "cometapi",
        "vercel",
    }
)
MODEL_NAMES = frozenset(
    {
        "OpenAIResponses",
        "OpenAIChat",
        "OpenAILike",
        "Claude",
        "AnthropicClaude",
        "Gemini",
        "GeminiOpenAI",
        "Groq",
        "Ollama",
        "OllamaTools",
        "MistralChat",
        "AwsBedrock",
        "Claude(AwsBedrock)",
        "AzureOpenAI",
        "AzureAIFoundry",
        "Cohere",
        "DeepSeek",
        "xAI",
        "Together",
        "Fireworks",
        "OpenRouter",
        "Perplexity",
        "HuggingFace",
        "Nvidia",
        "WatsonX",
        "LiteLLM",
        "LiteLLMOpenAI",
        "LMStudio",
        "vLLM",
        "Cerebras",
        "CerebrasOpenAI",
        "Sambanova",
        "DeepInfra",
        "Nebius",
        "LlamaOpenAI",
        "Llama",
        "DashScope",
        "Siliconflow",
        "InternLM",
        "LlamaCpp",
        "Portkey",
    }
)
DB_TYPES = frozenset(
    {
        "PostgresDb",
        "AsyncPostgresDb",
        "SqliteDb",
        "AsyncSqliteDb",
        "MongoDb",
        "AsyncMongoDb",
        "MySQLDb",
        "RedisDb",
        "InMemoryDb",
        "DynamoDb",
        "FirestoreDb",
        "GcsJsonDb",
        "JsonDb",
        "SingleStoreDb",
        "SurrealDb",
    }
)
INTERFACES = frozenset({"slack", "whatsapp", "a2a", "agui", "discord", "telegram", "mcp", "webhook"})
#: Linear: no two quantifiers can match the same characters at the same place (`llama3.1-8b` splits at its
#: first `-` or `:`, so `llama` followed by 60,000 dashes is not tried 60,000 ways).
MODEL_FAMILIES = re.compile(
    r"""(?x)
    (?:ft:)?(?:gpt-[0-9][0-9a-z.]*|o[1-9]|chatgpt-4o|text-embedding|davinci|curie|babbage|codex)(?:-[a-z0-9.]+)*
  | (?:us\.|eu\.|apac\.|global\.)?(?:anthropic\.)?claude-[a-z0-9.-]+(?::[0-9]+)?
  | (?:google/)?gemini-[a-z0-9.-]+ | gemma[0-9.]*(?::[a-z0-9.]+|-[a-z0-9.-]+)?
  | (?:meta-llama/|meta\.|us\.meta\.)?llama[0-9.]*(?:-[a-z0-9.:-]*|:[a-z0-9.:-]+)?
  | (?:mistralai/)?(?:mistral|mixtral|codestral|ministral|pixtral|magistral|devstral)[a-z0-9.-]*(?::[a-z0-9.]+)?
  | (?:qwen/)?qwen[0-9.]*(?:[:-][a-z0-9.:-]+)? | qwq[a-z0-9.:-]*
  | (?:deepseek-ai/)?deepseek[a-z0-9.:-]*
  | (?:amazon\.)?(?:nova|titan)-[a-z0-9.:-]+ | amazon\.nova-[a-z0-9.:-]+
  | command(?:-[a-z0-9.-]+)? | grok-[a-z0-9.-]+ | phi[0-9.]*(?::[a-z0-9.]+|-[a-z0-9.-]+)?
  | openai/gpt-oss-[0-9]+b | gpt-oss(?::[0-9]+b|-[0-9]+b) | kimi-[a-z0-9.-]+ | glm-[a-z0-9.-]+
  | sonar(?:-[a-z-]+)? | mistral-nemo | nemotron[a-z0-9.:-]* | granite[a-z0-9.:-]*
""",
    re.IGNORECASE,
)
#: What every family above starts with (lower case): most unknown ids are rejected without the pattern.
MODEL_PREFIXES = (
    "ft:",
    "gpt",
    "o1",
    "o2",
    "o3",
    "o4",
    "o5",
    "o6",
    "o7",
    "o8",
    "o9",
    "chatgpt",
    "text-embedding",
    "davinci",
    "curie",
    "babbage",
    "codex",
    "us.",
    "eu.",
    "apac.",
    "global.",
    "anthropic.",
    "claude",
    "google/",
    "gemini",
    "gemma",
    "meta-llama/",
    "meta.",
    "llama",
    "mistralai/",
    "mistral",
    "mixtral",
    "codestral",
    "ministral",
    "pixtral",
    "magistral",
    "devstral",
    "qwen",
    "qwq",
    "deepseek",
    "amazon.",
    "nova-",
    "titan-",
    "command",
    "grok-",
    "phi",
    "openai/gpt-oss",
    "kimi-",
    "glm-",
    "sonar",
    "nemotron",
    "granite",
)
SDK_VERSIONS = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")  # released versions; pre-releases need k sessions

#: field (the last element of a dimension's path, or "flag") -> exact names, and a pattern of families
EXACT = {
    "model_provider": PROVIDERS,
    "model_name": MODEL_NAMES,
    "db_type": DB_TYPES,
    "flag": frozenset(contract.FLAGS),
    "interface": INTERFACES,
    "reason": frozenset(contract.DROP_REASONS),
}
PATTERNS = {"model_id": MODEL_FAMILIES, "sdk_version": SDK_VERSIONS}


def known(field: str, value: str) -> bool:
    """Whether the registry admits `value` (never one longer than a stored value: the patterns never see it)."""
    if len(value) > MAX_VALUE_LENGTH:
        return False
    if value in EXACT.get(field, ()):
        return True
    pattern = PATTERNS.get(field)
    if pattern is None or (field == "model_id" and not value.lower().startswith(MODEL_PREFIXES)):
        return False
    return pattern.fullmatch(value) is not None
