"""Redaction for the captured code and environment: re-exported from the one redactor,
:mod:`prov4ml_lightning.redact` (a leaf module the sinks share)."""

from __future__ import annotations

from prov4ml_lightning.redact import REDACTED, is_secret_name, redact_argv, redact_env, redact_text, redact_url

__all__ = ["REDACTED", "is_secret_name", "redact_argv", "redact_env", "redact_text", "redact_url"]
