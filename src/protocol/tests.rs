use super::*;

pub(crate) const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

pub(crate) fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

#[test]
fn v2_payment_signature_example_decodes() {
    let p = PaymentPayload::from_header(&fixture("v2_payment_signature.b64")).unwrap();
    assert_eq!(p.version, X402Version::V2);
    assert_eq!(p.scheme, "exact");
    assert_eq!(p.network, "eip155:84532");
    assert_eq!(p.amount.as_deref(), Some("10000"));
    assert_eq!(
        p.asset.as_deref(),
        Some("0x036CbD53842c5426634e7929541eC2318f3dCF7e")
    );
    // The scheme payload stays raw here; `scheme` decodes it (scheme/exact/wire.rs tests).
    assert!(p.payload.get().contains("\"authorization\""));
}

#[test]
fn v1_x_payment_example_decodes() {
    let p = PaymentPayload::from_header(&fixture("v1_x_payment.b64")).unwrap();
    assert_eq!(p.version, X402Version::V1);
    assert_eq!(p.network, "base-sepolia");
    assert!(p.accepted.is_none() && p.asset.is_none());
}

#[test]
fn canonical_envelope_round_trips_to_the_spec_json() {
    for name in ["v1_x_payment.b64", "v2_payment_signature.b64"] {
        let p = PaymentPayload::from_header(&fixture(name)).unwrap();
        let json = p.to_canonical_json(p.payload.get());
        let again = PaymentPayload::from_json(json.as_bytes()).unwrap();
        assert_eq!(again.payload.get(), p.payload.get(), "{name}");
        assert_eq!(again.version, p.version);
        assert_eq!(again.network, p.network);
        // And the envelope equals the spec's JSON, field for field.
        let spec: serde_json::Value =
            serde_json::from_slice(&decode_header(&fixture(name)).unwrap()).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(ours, spec, "{name}");
    }
}

#[test]
fn receipts_decode_and_reencode_byte_for_byte() {
    for name in [
        "v2_payment_response_success.b64",
        "v2_payment_response_failure.b64",
        "v1_x_payment_response_success.b64",
        "v1_x_payment_response_failure.b64",
    ] {
        let raw = fixture(name);
        let json = decode_header(&raw).unwrap();
        let r: SettleResponse = serde_json::from_slice(&json).unwrap();
        assert_eq!(r.is_success(), name.contains("success"), "{name}");
        // Our encoder produces the same base64 for the same JSON text.
        assert_eq!(encode_header(&json).as_bytes(), &raw[..], "{name}");
    }
}

#[test]
fn our_receipt_encodes_like_the_spec_example() {
    let r = Receipt {
        success: true,
        error_reason: None,
        payer: None,
        transaction: "0x1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef",
        network: "eip155:84532",
        extensions: None,
    };
    let decoded: SettleResponse =
        serde_json::from_slice(&decode_header(r.to_header().as_bytes()).unwrap()).unwrap();
    assert!(decoded.is_success());
    assert_eq!(decoded.network.as_deref(), Some("eip155:84532"));
}

#[test]
fn v2_payment_required_example_round_trips() {
    let raw = fixture("v2_payment_required.b64");
    let json = decode_header(&raw).unwrap();
    let pr: v2::PaymentRequired = serde_json::from_slice(&json).unwrap();
    assert_eq!(pr.x402_version, 2);
    assert_eq!(pr.accepts[0].amount, "10000");
    assert_eq!(pr.accepts[0].extra.name, "USDC");
    let ours = serde_json::to_vec(&pr).unwrap();
    assert_eq!(encode_header(&ours).as_bytes(), &raw[..]);
}

#[test]
fn settle_response_without_success_is_a_failure() {
    let r: SettleResponse =
        serde_json::from_str(r#"{"transaction":"0xabc","network":"eip155:84532"}"#).unwrap();
    assert!(!r.is_success());
    let r: SettleResponse =
        serde_json::from_str(r#"{"success":true,"transaction":"","network":"x"}"#).unwrap();
    assert!(
        !r.is_success(),
        "success without a transaction is not a settlement"
    );
    let r: SettleResponse = serde_json::from_str(r#"{"success":null}"#).unwrap();
    assert!(!r.is_success());
}

#[test]
fn malformed_headers_are_errors_not_panics() {
    let spec =
        String::from_utf8(decode_header(&fixture("v2_payment_signature.b64")).unwrap()).unwrap();
    let b64 = |s: &str| encode_header(s.as_bytes());
    let cases: Vec<(String, &str)> = vec![
        ("not base64 at all!".into(), "base64"),
        (
            format!("{}_-{}", &b64(&spec)[..8], &b64(&spec)[10..]),
            "base64",
        ),
        ("".into(), "json"),
        (b64("{}"), "json"),
        (b64("[1,2]"), "json"),
        (
            b64(&spec.replace("\"x402Version\":2", "\"x402Version\":3")),
            "version",
        ),
        (b64(&spec.replace("\"x402Version\":2,", "")), "version"),
        ("A".repeat(MAX_PAYMENT_HEADER_BYTES + 1), "large"),
    ];
    for (value, kind) in cases {
        let err = PaymentPayload::from_header(value.as_bytes())
            .err()
            .unwrap_or_else(|| panic!("accepted {kind}: {value}"));
        let ok = match kind {
            "base64" => matches!(err, CodecError::Base64(_)),
            "json" => matches!(err, CodecError::Json(_)),
            "version" => matches!(err, CodecError::Version(_)),
            "large" => matches!(err, CodecError::TooLarge(_)),
            _ => false,
        };
        assert!(ok, "{kind}: got {err:?}");
    }
}

#[test]
fn unpadded_base64_is_accepted() {
    let raw = fixture("v2_payment_signature.b64");
    let unpadded: Vec<u8> = raw.iter().copied().filter(|b| *b != b'=').collect();
    assert!(PaymentPayload::from_header(&unpadded).is_ok());
}

#[test]
fn parse_uint_edges() {
    assert_eq!(parse_uint("0"), Some(U256::ZERO));
    assert_eq!(parse_uint("0x0"), Some(U256::ZERO));
    for bad in ["", "0x", "-1", "1.5", " 1", "1e3", "0xg"] {
        assert_eq!(parse_uint(bad), None, "{bad}");
    }
    assert_eq!(parse_uint(&"9".repeat(79)), None);
}

#[test]
fn v2_challenge_without_description_or_mime_type_is_read() {
    // As x402-axum 2.0.2 sends it when no description is configured.
    let json = r#"{"x402Version":2,"error":"Payment-Signature header is required","resource":{"url":"http://h/paid"},"accepts":[{"scheme":"exact","network":"eip155:84532","amount":"1000","payTo":"0x90F79bf6EB2c4f870365E785982E1f101E93b906","maxTimeoutSeconds":300,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","extra":{"name":"USDC","version":"2"}}]}"#;
    let r: v2::PaymentRequired = serde_json::from_str(json).unwrap();
    assert_eq!(r.resource.url, "http://h/paid");
    assert_eq!(
        (
            r.resource.description.as_str(),
            r.resource.mime_type.as_str()
        ),
        ("", "")
    );
}
