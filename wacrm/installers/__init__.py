"""Installers: desired CRM state vs what the CRM has, planned then applied idempotently."""
