"""Messages Plática starts: proactive messages, templates, broadcasts, and WhatsApp's window."""
