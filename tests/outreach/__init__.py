"""Tests of platica.outreach: templates and their sync from Twilio."""
