"""The HTML audit report: ``render_audit_html(predicate, signer_fingerprint=..., verification=...)``."""

from audit.report.render import render_audit_html

__all__ = ["render_audit_html"]
