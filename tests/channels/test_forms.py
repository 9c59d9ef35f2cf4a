"""channels/forms.py: the posts it builds are the ones Twilio sends, parsed as the webhooks parse
them, and signed as Twilio signs them."""

from __future__ import annotations

from platica.channels import forms
from platica.channels.parsing import Media, parse_inbound, parse_status
from platica.models import Channel, MessageStatus

ME = "+15005550006"
CONTACT = "+34600111222"


def as_form(fields: dict[str, str]) -> dict[str, list[str]]:
    return {name: [value] for name, value in fields.items()}


class TestInboundForm:
    def test_whatsapp_fields(self) -> None:
        form = forms.inbound_form(Channel.whatsapp, CONTACT, ME, "Hola", profile_name="Ana")

        message = parse_inbound(as_form(form), Channel.whatsapp)

        assert (message.sender, message.recipient, message.body) == (CONTACT, ME, "Hola")
        assert (message.profile_name, message.wa_id) == ("Ana", CONTACT.lstrip("+"))
        assert form["MessageType"] == "text"
        assert form["MessageSid"] == form["SmsSid"] == form["SmsMessageSid"]

    def test_sms_has_no_whatsapp_fields(self) -> None:
        form = forms.inbound_form(Channel.sms, CONTACT, ME, "Hola", profile_name="Ana")

        assert (form["From"], form["To"]) == (CONTACT, ME)
        assert not {"ProfileName", "WaId", "MessageType"} & set(form)

    def test_media_pairs(self) -> None:
        media = [
            ("https://api.twilio.com/media/ME0", "image/jpeg"),
            ("https://x/ME1", "text/vcard"),
        ]
        form = forms.inbound_form(Channel.whatsapp, CONTACT, ME, "", media=media)

        message = parse_inbound(as_form(form), Channel.whatsapp)

        assert message.media == tuple(Media(url, kind) for url, kind in media)
        assert (form["NumMedia"], form["MessageType"]) == ("2", "image")

    def test_extra_fields_replace_any(self) -> None:
        form = forms.inbound_form(Channel.sms, CONTACT, ME, "Hola", extra={"From": "", "New": "1"})

        assert (form["From"], form["New"]) == ("", "1")


class TestStatusForm:
    def test_whatsapp_callback(self) -> None:
        sid = forms.new_message_sid()
        form = forms.status_form(Channel.whatsapp, ME, CONTACT, sid, "failed", error_code="63016")

        status = parse_status(as_form(form))

        assert (status.sid, status.status, status.error_code) == (sid, MessageStatus.failed, 63016)
        assert (form["From"], form["ChannelPrefix"]) == (f"whatsapp:{ME}", "whatsapp")


class TestSignature:
    def test_twilios_published_vector(self) -> None:
        """twilio-python's base vector (tests/channels/test_signature.py checks it too)."""
        params = {
            "CallSid": "CA1234567890ABCDE",
            "Digits": "1234",
            "From": "+14158675309",
            "To": "+18005551212",
            "Caller": "+14158675309",
        }
        signed = forms.signature(params, "12345", "https://mycompany.com", "/myapp.php?foo=1&bar=2")
        assert signed == "RSOYDt4T1cUTdK1PDd93/VVr8B8="

    def test_over_the_public_url_and_path(self) -> None:
        form = forms.inbound_form(Channel.sms, CONTACT, ME, "Hola")
        public = "https://platica.example.com"

        assert forms.signature(form, "t", public, "/webhook/sms") == forms.signature(
            form, "t", public + "/webhook/sms"
        )
        assert forms.signature(form, "t", public, "/webhook/sms") != forms.signature(
            form, "t", "http://127.0.0.1:8000", "/webhook/sms"
        )
