"""The ASGI server: WhatsApp and CRM webhooks, health, metrics."""
