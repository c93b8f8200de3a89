"""Local simulators of the WhatsApp Cloud API and CRM APIs, faithful to documented shapes."""
