"""Twilio's form posts: parse_form, parse_inbound, parse_status."""

from __future__ import annotations

import pytest

from platica.channels.parsing import InboundMessage, Media, parse_inbound, parse_status
from platica.errors import BadRequest, UnsupportedMediaType
from platica.http import FormData, parse_form
from platica.models import Channel, MessageStatus
from tests.factories import CONTACT, SMS_NUMBER, WHATSAPP_NUMBER, inbound_form, new_sid, status_form

FORM = "application/x-www-form-urlencoded"


def as_form(fields: dict[str, str]) -> FormData:
    return {name: [value] for name, value in fields.items()}


def inbound(channel: Channel = Channel.sms, **extra: str) -> InboundMessage:
    return parse_inbound(as_form(inbound_form(channel.value, **extra)), channel)


def bad_inbound(fields: dict[str, str], channel: Channel = Channel.sms) -> str:
    with pytest.raises(BadRequest) as caught:
        parse_inbound(as_form(fields), channel)
    assert caught.value.status_code == 400
    return caught.value.message


def bad_status(fields: dict[str, str]) -> str:
    with pytest.raises(BadRequest) as caught:
        parse_status(as_form(fields))
    assert caught.value.status_code == 400
    return caught.value.message


class TestParseForm:
    def test_fields_decoded(self) -> None:
        form = parse_form(b"Body=Hola+%C3%B1and%C3%BA&From=%2B34600111222", FORM)
        assert form == {"Body": ["Hola ñandú"], "From": ["+34600111222"]}

    def test_content_type_parameters_and_case_ignored(self) -> None:
        form = parse_form(b"Body=hi", "Application/X-WWW-Form-Urlencoded; charset=utf-8")
        assert form == {"Body": ["hi"]}

    def test_repeated_fields_kept_in_order(self) -> None:
        form = parse_form(b"MediaUrl=a&Body=&MediaUrl=b", FORM)
        assert form == {"MediaUrl": ["a", "b"], "Body": [""]}

    @pytest.mark.parametrize(
        "content_type", ["application/json", "multipart/form-data; boundary=x", "", None]
    )
    def test_not_a_form(self, content_type: str | None) -> None:
        with pytest.raises(UnsupportedMediaType) as caught:
            parse_form(b"Body=hi", content_type)
        assert caught.value.status_code == 415
        assert "application/x-www-form-urlencoded" in caught.value.message

    @pytest.mark.parametrize("body", [b"Body=%ff%fe", b"Body=\xff", b"%C3=x"])
    def test_invalid_utf8(self, body: bytes) -> None:
        with pytest.raises(BadRequest) as caught:
            parse_form(body, FORM)
        assert caught.value.status_code == 400
        assert "UTF-8" in caught.value.message

    @pytest.mark.parametrize("body", [b"Body=a%00b", b"Bo%00dy=x"])
    def test_nul_character(self, body: bytes) -> None:
        with pytest.raises(BadRequest) as caught:
            parse_form(body, FORM)
        assert caught.value.status_code == 400
        assert "NUL" in caught.value.message

    def test_too_many_fields(self) -> None:
        body = b"&".join(b"f%d=1" % index for index in range(1001))
        with pytest.raises(BadRequest) as caught:
            parse_form(body, FORM)
        assert caught.value.status_code == 400


class TestParseInbound:
    def test_sms(self) -> None:
        sid = new_sid()
        message = inbound(Channel.sms, sid=sid, body="¿Abren hoy?")
        assert message == InboundMessage(
            sid=sid,
            channel=Channel.sms,
            sender=CONTACT,
            recipient=SMS_NUMBER,
            body="¿Abren hoy?",
        )

    def test_whatsapp_prefix_removed(self) -> None:
        message = inbound(Channel.whatsapp)
        assert message.channel is Channel.whatsapp
        assert message.sender == CONTACT
        assert message.recipient == WHATSAPP_NUMBER

    def test_profile_name_and_wa_id(self) -> None:
        message = inbound(Channel.whatsapp, ProfileName="Ana María", WaId="34600111222")
        assert message.profile_name == "Ana María"
        assert message.wa_id == "34600111222"

    def test_empty_profile_name_is_none(self) -> None:
        message = inbound(Channel.whatsapp, ProfileName="", WaId="")
        assert message.profile_name is None
        assert message.wa_id is None

    def test_missing_body_is_empty(self) -> None:
        fields = inbound_form("sms")
        del fields["Body"]
        assert parse_inbound(as_form(fields), Channel.sms).body == ""

    @pytest.mark.parametrize("name", ["MessageSid", "From", "To"])
    def test_missing_field(self, name: str) -> None:
        fields = inbound_form("sms")
        del fields[name]
        assert bad_inbound(fields) == f"missing required field {name}"

    @pytest.mark.parametrize("name", ["MessageSid", "From", "To"])
    def test_blank_field(self, name: str) -> None:
        assert name in bad_inbound(inbound_form("sms", **{name: "  "}))

    @pytest.mark.parametrize(
        "sid",
        [
            "SM123",
            "SM" + "g" * 32,
            "sm" + "a" * 32,
            "SM" + "a" * 33,
            "S" + "a" * 33,
        ],
    )
    def test_malformed_sid(self, sid: str) -> None:
        assert "MessageSid" in bad_inbound(inbound_form("sms", sid=sid))

    def test_whatsapp_channel_requires_prefix(self) -> None:
        message = bad_inbound(inbound_form("sms"), Channel.whatsapp)
        assert "From" in message
        assert "whatsapp:" in message

    def test_whatsapp_to_requires_prefix(self) -> None:
        fields = inbound_form("whatsapp", To=WHATSAPP_NUMBER)
        assert "To" in bad_inbound(fields, Channel.whatsapp)

    def test_sms_channel_refuses_prefix(self) -> None:
        message = bad_inbound(inbound_form("whatsapp"), Channel.sms)
        assert "From" in message
        assert "/webhook/whatsapp" in message

    def test_bare_whatsapp_prefix(self) -> None:
        fields = inbound_form("whatsapp", From="whatsapp:")
        assert "From" in bad_inbound(fields, Channel.whatsapp)

    def test_media_pairs(self) -> None:
        message = inbound(
            Channel.whatsapp,
            NumMedia="2",
            MediaUrl0="https://api.twilio.com/media/ME0",
            MediaContentType0="image/jpeg",
            MediaUrl1="https://api.twilio.com/media/ME1",
            MediaContentType1="audio/ogg",
        )
        assert message.media == (
            Media(url="https://api.twilio.com/media/ME0", content_type="image/jpeg"),
            Media(url="https://api.twilio.com/media/ME1", content_type="audio/ogg"),
        )

    def test_media_without_content_type(self) -> None:
        message = inbound(NumMedia="1", MediaUrl0="https://api.twilio.com/media/ME0")
        assert message.media == (Media(url="https://api.twilio.com/media/ME0", content_type=""),)

    def test_media_url_missing(self) -> None:
        assert "MediaUrl1" in bad_inbound(
            inbound_form("sms", NumMedia="2", MediaUrl0="https://api.twilio.com/media/ME0")
        )

    @pytest.mark.parametrize("num_media", ["two", "1.5", "1e3", "9" * 5000])
    def test_num_media_not_a_number(self, num_media: str) -> None:
        assert "NumMedia must be a whole number" in bad_inbound(
            inbound_form("sms", NumMedia=num_media)
        )

    def test_empty_num_media_means_none(self) -> None:
        assert inbound(NumMedia="").media == ()

    @pytest.mark.parametrize("num_media", ["-1", "11", "1000000"])
    def test_num_media_out_of_range(self, num_media: str) -> None:
        assert bad_inbound(inbound_form("sms", NumMedia=num_media)) == (
            "NumMedia must be between 0 and 10"
        )

    def test_body_too_long(self) -> None:
        assert "Body" in bad_inbound(inbound_form("sms", body="x" * 16_001))


class TestParseStatus:
    @pytest.mark.parametrize(
        "status", ["queued", "sent", "delivered", "read", "failed", "undelivered", "canceled"]
    )
    def test_statuses(self, status: str) -> None:
        sid = new_sid()
        update = parse_status(as_form(status_form(sid, status)))
        assert update.sid == sid
        assert update.status is MessageStatus(status)
        assert update.error_code is None
        assert update.error_message is None

    def test_status_case_insensitive(self) -> None:
        assert parse_status(as_form(status_form(new_sid(), "Delivered"))).status is (
            MessageStatus.delivered
        )

    def test_sms_status_alone(self) -> None:
        fields = status_form(new_sid(), "sent")
        del fields["MessageStatus"]
        assert parse_status(as_form(fields)).status is MessageStatus.sent

    def test_numeric_error_code(self) -> None:
        update = parse_status(
            as_form(
                status_form(
                    new_sid(), "undelivered", ErrorCode="30007", ErrorMessage="Carrier violation"
                )
            )
        )
        assert update.status is MessageStatus.undelivered
        assert update.error_code == 30007
        assert update.error_message == "Carrier violation"

    def test_word_error_code_kept_as_message(self) -> None:
        update = parse_status(
            as_form(status_form(new_sid(), "failed", ErrorCode="InvalidSandboxRequest"))
        )
        assert update.error_code is None
        assert update.error_message == "InvalidSandboxRequest"
        assert update.extra == {"ErrorCode": "InvalidSandboxRequest"}

    @pytest.mark.parametrize("code", ["²", "٣", "-5", "99999999999"])
    def test_odd_error_code_kept_as_message(self, code: str) -> None:
        update = parse_status(as_form(status_form(new_sid(), "failed", ErrorCode=code)))
        assert update.error_code is None
        assert update.error_message == code

    def test_unknown_status(self) -> None:
        assert "MessageStatus" in bad_status(status_form(new_sid(), "teleported"))

    def test_missing_status(self) -> None:
        fields = status_form(new_sid(), "sent")
        del fields["MessageStatus"], fields["SmsStatus"]
        assert bad_status(fields) == "missing required field MessageStatus"

    def test_missing_sid(self) -> None:
        fields = status_form(new_sid(), "sent")
        del fields["MessageSid"]
        assert bad_status(fields) == "missing required field MessageSid"

    def test_malformed_sid(self) -> None:
        assert "MessageSid" in bad_status(status_form("SM-not-a-sid", "sent"))
