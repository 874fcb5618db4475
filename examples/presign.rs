//! Pre-signs unique x402 v2 payment headers for the load benchmark (`benches/load/run.sh`).
//!
//! Reads a challenge (the base64 `PAYMENT-REQUIRED` value) from a file, signs `--count`
//! authorizations for its first option with fresh random nonces, and writes one
//! `PAYMENT-SIGNATURE` value per line. The key comes from an environment variable, never the
//! command line.
//!
//! ```sh
//! X402_PAYER_KEY=0x… cargo run --release --example presign -- \
//!     --challenge challenge.b64 --count 200000 --valid-for 21600 --out headers.txt
//! ```

use std::io::Write;
use std::process::ExitCode;

use alloy::signers::local::PrivateKeySigner;
use x402_gateway::client::{self, Window};
use x402_gateway::clock::unix_now;
use x402_gateway::protocol::{self, v2};

struct Args {
    challenge: String,
    out: String,
    count: usize,
    valid_for: u64,
    key_env: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        challenge: String::new(),
        out: String::new(),
        count: 100_000,
        valid_for: 6 * 3600,
        key_env: "X402_PAYER_KEY".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--challenge" => args.challenge = value()?,
            "--out" => args.out = value()?,
            "--count" => args.count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--valid-for" => {
                args.valid_for = value()?.parse().map_err(|e| format!("--valid-for: {e}"))?;
            }
            "--key-env" => args.key_env = value()?,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if args.challenge.is_empty() || args.out.is_empty() {
        return Err("usage: presign --challenge FILE --out FILE [--count N] [--valid-for SECONDS] [--key-env VAR]".to_owned());
    }
    Ok(args)
}

fn run(args: &Args) -> Result<(), String> {
    let key = std::env::var(&args.key_env).map_err(|_| format!("${} is not set", args.key_env))?;
    let signer: PrivateKeySigner = key
        .trim()
        .parse()
        .map_err(|_| format!("${} is not a private key", args.key_env))?;
    let b64 =
        std::fs::read_to_string(&args.challenge).map_err(|e| format!("{}: {e}", args.challenge))?;
    let json = protocol::decode_header(b64.trim().as_bytes())
        .map_err(|e| format!("challenge is not base64: {e}"))?;
    let required: v2::PaymentRequired =
        serde_json::from_slice(&json).map_err(|e| format!("challenge is not v2 JSON: {e}"))?;
    let now = unix_now();
    let window = Window {
        valid_after: now.saturating_sub(client::VALID_AFTER_SLACK_SECONDS),
        valid_before: now + args.valid_for,
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = args.count.div_ceil(workers);
    let chunks: Vec<Result<String, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (signer, required) = (&signer, &required);
                let n = per.min(args.count.saturating_sub(w * per));
                s.spawn(move || {
                    let mut text = String::with_capacity(n * 1100);
                    for _ in 0..n {
                        let h = client::sign_v2_in_window(
                            signer,
                            required,
                            0,
                            window,
                            client::random_nonce(),
                        )
                        .map_err(|e| e.to_string())?;
                        text.push_str(&h);
                        text.push('\n');
                    }
                    Ok(text)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("signer thread panicked".to_owned()))
            })
            .collect()
    });
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&args.out).map_err(|e| format!("{}: {e}", args.out))?,
    );
    for chunk in chunks {
        file.write_all(chunk?.as_bytes())
            .map_err(|e| format!("{}: {e}", args.out))?;
    }
    file.flush().map_err(|e| format!("{}: {e}", args.out))
}

fn main() -> ExitCode {
    match parse_args().and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("presign: {e}");
            ExitCode::FAILURE
        }
    }
}
