"""wacrm: WhatsApp Business Platform connector for CRMs."""

__version__ = "0.1.0"
