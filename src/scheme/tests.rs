use alloy::primitives::U256;

use super::*;
use crate::protocol::tests::fixture;
use crate::protocol::{decode_header, encode_header};

/// The signature of the spec's shared EIP-3009 example (x402-protocol.md §8.1).
pub(crate) const SPEC_SIGNATURE: &str = "2d6a7588d6acca505cbf0d9a4a227e0c52c6c34008c8e8986a1283259764173608a2ce6496642e377d6da8dbbf5836e9bd15092f9ecab05ded3d6293af148b571c";

fn exact(p: &PaymentPayload) -> exact::Payload {
    match Authorized::decode(p).unwrap() {
        Authorized::Exact(e) => e,
    }
}

fn spec_json() -> String {
    String::from_utf8(decode_header(&fixture("v2_payment_signature.b64")).unwrap()).unwrap()
}

#[test]
fn the_spec_examples_decode_to_their_authorizations() {
    let p = PaymentPayload::from_header(&fixture("v2_payment_signature.b64")).unwrap();
    let e = exact(&p);
    let a = &e.authorization;
    assert_eq!(
        a.from.to_checksum(None),
        "0x857b06519E91e3A54538791bDbb0E22373e36b66"
    );
    assert_eq!(a.value, U256::from(10000u64));
    assert_eq!((a.valid_after, a.valid_before), (1740672089, 1740672154));
    assert_eq!(e.signature.len(), 65);
    assert_eq!(alloy::primitives::hex::encode(&e.signature), SPEC_SIGNATURE);
    let v1 = PaymentPayload::from_header(&fixture("v1_x_payment.b64")).unwrap();
    assert_eq!(exact(&v1).authorization.value, U256::from(10000u64));
}

#[test]
fn canonical_json_round_trips_to_the_same_payment() {
    for name in ["v1_x_payment.b64", "v2_payment_signature.b64"] {
        let p = PaymentPayload::from_header(&fixture(name)).unwrap();
        let auth = Authorized::decode(&p).unwrap();
        let json = p.to_canonical_json(&auth.canonical_json());
        let again = PaymentPayload::from_json(json.as_bytes()).unwrap();
        assert_eq!(Authorized::decode(&again).unwrap(), auth, "{name}");
        // Field for field the spec's JSON.
        let spec: serde_json::Value =
            serde_json::from_slice(&decode_header(&fixture(name)).unwrap()).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(ours, spec, "{name}");
    }
}

#[test]
fn lenient_integer_spellings_read_the_same_value() {
    let spec = spec_json();
    let hex = spec.replace("\"value\":\"10000\"", "\"value\":\"0x2710\"");
    let num = spec.replace(
        "\"validBefore\":\"1740672154\"",
        "\"validBefore\":1740672154",
    );
    for s in [hex, num] {
        let p = PaymentPayload::from_json(s.as_bytes()).unwrap();
        let auth = Authorized::decode(&p).unwrap();
        assert_eq!(auth.pays().1, U256::from(10000u64));
        assert_eq!(auth.valid_before(), 1740672154);
        // The canonical form written to the facilitator uses decimal strings.
        let canonical = auth.canonical_json();
        assert!(canonical.contains("\"value\":\"10000\""));
        assert!(canonical.contains("\"validBefore\":\"1740672154\""));
    }
}

#[test]
fn malformed_scheme_payloads_are_rejections_not_panics() {
    let spec = spec_json();
    let b64 = |s: &str| encode_header(s.as_bytes());
    for broken in [
        spec.replace("0x857b06519E91e3A54538791bDbb0E22373e36b66", "0x857b"),
        spec.replace("\"10000\",\"validAfter\"", "\"-1\",\"validAfter\""),
        spec.replace("\"1740672154\"", "\"1e9\""),
        spec.replace("0xf3746613", "0xzz746613"),
        spec.replace("0x2d6a7588", "2d6a7588"),
        spec.replace(SPEC_SIGNATURE, "abcd"),
        spec.replace("\"authorization\"", "\"authorisation\""),
    ] {
        assert_ne!(broken, spec, "the case changes nothing");
        // The envelope is fine; the scheme payload is not.
        let p = PaymentPayload::from_header(b64(&broken).as_bytes()).unwrap();
        let err = Authorized::decode(&p).unwrap_err();
        assert!(
            matches!(err, PaymentRejection::InvalidPayload(_)),
            "{broken}: {err:?}"
        );
    }
    let other = spec.replace("\"scheme\":\"exact\"", "\"scheme\":\"upto\"");
    let p = PaymentPayload::from_header(b64(&other).as_bytes()).unwrap();
    assert!(matches!(
        Authorized::decode(&p),
        Err(PaymentRejection::UnsupportedScheme(s)) if s == "upto"
    ));
}
