"""The ASGI server: WhatsApp and CRM webhooks, health, metrics."""

from wacrm.server.app import WHATSAPP_WEBHOOK_PATH, WacrmApp, create_app, require_webhook_secrets

__all__ = ["WHATSAPP_WEBHOOK_PATH", "WacrmApp", "create_app", "require_webhook_secrets"]
