"""WhatsApp providers: Meta Cloud API and Twilio (verify, parse, send, classify errors)."""
