use super::*;
use crate::pricing::PriceTable;
use crate::protocol::{self, v2, ErrorReason};
use crate::scheme::exact::client;
use crate::scheme::exact::verify::{check_payment, check_signature, check_time};
use crate::scheme::exact::Payload;
use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;

const KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const NOW: u64 = 1_800_000_000;

fn table() -> PriceTable {
    crate::fuzzing::test_table(
        r#"
[[route]]
path = "/x"
  [[route.accept]]
  price = "$0.001"
  [[route.accept]]
  network = "base"
  price = "$0.002"
"#,
    )
}

fn required(t: &PriceTable) -> v2::PaymentRequired {
    let c = t.routes()[0].challenge.as_ref().unwrap();
    let (h, _) = c.unpaid("http://h/x");
    serde_json::from_slice(&protocol::decode_header(h.as_bytes()).unwrap()).unwrap()
}

fn sep(t: &PriceTable, i: usize) -> B256 {
    t.routes()[0].challenge.as_ref().unwrap().options[i].domain_separator
}

fn payload(req: &v2::PaymentRequired, index: usize, at: u64) -> (PaymentPayload, Payload) {
    let signer: PrivateKeySigner = KEY.parse().unwrap();
    let h = client::sign_v2(&signer, req, index, at, B256::repeat_byte(1)).unwrap();
    let p = PaymentPayload::from_header(h.as_bytes()).unwrap();
    let Authorized::Exact(e) = Authorized::decode(&p).unwrap();
    (p, e)
}

fn select(
    r: &crate::pricing::PricedRoute,
    p: &(PaymentPayload, Payload),
) -> Result<usize, PaymentRejection> {
    let prepared = &r.challenge.as_ref().unwrap().options;
    select_option(
        &r.rule.options,
        prepared,
        &p.0,
        &Authorized::Exact(p.1.clone()),
    )
}

#[test]
fn a_correct_payment_passes_every_check() {
    let t = table();
    let r = &t.routes()[0];
    let req = required(&t);
    let p = payload(&req, 0, NOW);
    let i = select(r, &p).unwrap();
    assert_eq!(i, 0);
    let (payer, sig) = check_payment(&p.1, &r.rule.options[i], &sep(&t, i), NOW).unwrap();
    assert_eq!(
        payer,
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
            .parse::<Address>()
            .unwrap()
    );
    assert_eq!(sig, SignatureCheck::Recovered);
    // The second option is selected by its network.
    let p = payload(&req, 1, NOW);
    let i = select(r, &p).unwrap();
    assert_eq!(i, 1);
    assert!(check_payment(&p.1, &r.rule.options[i], &sep(&t, i), NOW).is_ok());
}

#[test]
fn time_window_edges() {
    let t = table();
    let o = &t.routes()[0].rule.options[0];
    let (_, p) = payload(&required(&t), 0, NOW);
    let a = &p.authorization;
    // validAfter = NOW - 600, validBefore = NOW + 300.
    // (A long maxTimeoutSeconds here: the upper bound has its own test.)
    assert_eq!(check_time(a, a.valid_after, 3000), Ok(()));
    assert_eq!(
        check_time(a, a.valid_after - 1, 3000),
        Err(PaymentRejection::NotYetValid)
    );
    assert_eq!(check_time(a, a.valid_before - 6, 3000), Ok(()));
    assert_eq!(
        check_time(a, a.valid_before - 5, 3000),
        Err(PaymentRejection::Expired)
    );
    assert!(check_payment(&p, o, &sep(&t, 0), a.valid_before).is_err());
}

#[test]
fn valid_before_is_bounded_by_max_timeout_plus_a_minute() {
    let t = table();
    let (_, p) = payload(&required(&t), 0, NOW);
    let mut a = p.authorization;
    a.valid_after = NOW - 600;
    // maxTimeoutSeconds 300: up to NOW + 360 is accepted, one second more is not.
    a.valid_before = NOW + 360;
    assert_eq!(check_time(&a, NOW, 300), Ok(()));
    a.valid_before = NOW + 361;
    assert_eq!(
        check_time(&a, NOW, 300),
        Err(PaymentRejection::TooLong { got: 361, max: 360 })
    );
    // Years away (what a client could use to pin a replay-guard entry) is refused with the
    // reference reason for the valid-before window.
    a.valid_before = NOW + 10 * 365 * 86_400;
    let e = check_time(&a, NOW, 300).unwrap_err();
    assert_eq!(e.reason(), ErrorReason::ValidBefore);
    a.valid_before = u64::MAX;
    assert!(check_time(&a, NOW, 300).is_err());
}

#[test]
fn amount_recipient_and_signature_mismatches() {
    let t = table();
    let o = t.routes()[0].rule.options[0].clone();
    let (_, p) = payload(&required(&t), 0, NOW);
    let s = sep(&t, 0);
    let mut dearer = o.clone();
    dearer.amount = U256::from(1001);
    assert!(matches!(
        check_payment(&p, &dearer, &s, NOW),
        Err(PaymentRejection::AmountMismatch { .. })
    ));
    let mut other = o.clone();
    other.pay_to = Address::repeat_byte(9);
    assert_eq!(
        check_payment(&p, &other, &s, NOW),
        Err(PaymentRejection::RecipientMismatch)
    );
    assert_eq!(
        check_payment(&p, &o, &B256::repeat_byte(3), NOW),
        Err(PaymentRejection::InvalidSignature)
    );
    let mut long = p;
    long.signature = vec![0u8; 100].into();
    assert_eq!(
        check_signature(&long.authorization, &long.signature, &s),
        Ok(SignatureCheck::Deferred)
    );
}

#[test]
fn option_selection_failures() {
    let t = table();
    let r = &t.routes()[0];
    let (mut p, _) = payload(&required(&t), 0, NOW);
    p.scheme = "upto".into();
    assert_eq!(
        Authorized::decode(&p),
        Err(PaymentRejection::UnsupportedScheme("upto".into()))
    );
    let mut p = payload(&required(&t), 0, NOW);
    p.0.network = "eip155:1".into();
    assert!(matches!(
        select(r, &p),
        Err(PaymentRejection::NoMatchingRequirements(_))
    ));
    let mut p = payload(&required(&t), 0, NOW);
    p.0.asset = Some("0x0000000000000000000000000000000000000001".into());
    assert!(select(r, &p).is_err());
}

#[test]
fn reasons_use_reference_names() {
    assert_eq!(
        PaymentRejection::InvalidSignature.reason().as_str(),
        "invalid_exact_evm_signature"
    );
    assert_eq!(
        PaymentRejection::Expired.reason().as_str(),
        "invalid_exact_evm_payload_authorization_valid_before"
    );
    assert_eq!(
        PaymentRejection::AlreadyUsed.reason().as_str(),
        "invalid_exact_evm_nonce_already_used"
    );
    let f = PaymentRejection::Facilitator {
        reason: "insufficient_funds".into(),
        message: None,
    };
    assert_eq!(f.reason().as_str(), "insufficient_funds");
}
