//! Realistic payment histories for the benchmark and the tests, produced by the
//! domain's own `decide` (so every history is one the write side could have written)
//! from a seeded generator (so a seed always gives the same history).

// A test kit (feature `testkit`): scripted histories read best as one script.
#![allow(clippy::too_many_lines)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use paystream_domain::aggregate::{stream_id, Aggregate, Context, DomainEvent};
use paystream_domain::country::CountryCode;
use paystream_domain::id::{BatchId, CaptureId, DisputeId, MerchantId, PaymentId, RefundId};
use paystream_domain::merchant::{FeeSchedule, Merchant, MerchantAggregate, MerchantCommand, MerchantEvent, Tier};
use paystream_domain::method::{
    BankTransferInput, CardInput, CardNumber, Cvc, DeviceToken, NfcInput, PaymentMethodInput, QrCodeInput, QrScheme,
    WalletInput, WalletProvider,
};
use paystream_domain::payment::{
    AcquirerOutcome, AmountInput, CaptureMethod, Customer, DeclineCode, DisputeOutcome, InitiatePayment, Payment,
    PaymentAggregate, PaymentCommand, PaymentEvent, PaymentStatus, ReviewDecision,
};
use paystream_domain::risk::RiskSignals;
use paystream_domain::time::Timestamp;
use paystream_domain::{Currency, DomainError, Money};
use paystream_store::{Metadata, NewEvent};
use uuid::Uuid;

/// The fingerprint key of simulated histories (never a production key).
pub const SIM_FINGERPRINT_KEY: &[u8] = b"paystream-sim-fingerprint-key";

/// Encodes a domain event as the write side does (`commands::bus::encode`).
pub fn encode<E: DomainEvent>(event: &E) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event.event_type().to_string(),
        schema_version: event.schema_version(),
        metadata: Metadata::default(),
        // Domain events are plain data; serializing them cannot fail.
        payload: serde_json::to_vec(event).unwrap_or_default(),
    }
}

pub fn merchant_stream(id: MerchantId) -> String {
    stream_id::<MerchantAggregate>(id.as_uuid())
}

pub fn payment_stream(id: PaymentId) -> String {
    stream_id::<PaymentAggregate>(id.as_uuid())
}

/// A card that passes validation (Visa test number).
pub fn card() -> PaymentMethodInput {
    card_number("4242424242424242")
}

pub fn card_number(number: &str) -> PaymentMethodInput {
    PaymentMethodInput::Card {
        card: CardInput { number: CardNumber::new(number), exp_month: 12, exp_year: 2099, cvc: Cvc::new("123") },
    }
}

pub fn wallet(provider: WalletProvider, account: &str) -> PaymentMethodInput {
    PaymentMethodInput::Wallet { wallet: WalletInput { provider, account_id: account.to_string() } }
}

pub fn qr_code(scheme: QrScheme, payer: &str) -> PaymentMethodInput {
    PaymentMethodInput::QrCode { qr_code: QrCodeInput { scheme, payer_id: payer.to_string() } }
}

pub fn bank_transfer(account: &str) -> PaymentMethodInput {
    PaymentMethodInput::BankTransfer {
        bank_transfer: BankTransferInput {
            bank_code: "ICBKCNBJ".into(),
            account_holder: "Li Wei".into(),
            account_id: account.to_string(),
        },
    }
}

pub fn nfc(token: &str) -> PaymentMethodInput {
    PaymentMethodInput::Nfc { nfc: NfcInput { device_token: DeviceToken::new(token) } }
}

/// A merchant onboarded with `decide`: its state and the event.
pub fn onboard(
    merchant_id: MerchantId,
    name: &str,
    tier: Tier,
    currency: Currency,
    fees: FeeSchedule,
    now: Timestamp,
) -> Result<(Merchant, Vec<MerchantEvent>), DomainError> {
    let context = Context::new(SIM_FINGERPRINT_KEY.to_vec());
    let command = MerchantCommand::Onboard {
        merchant_id,
        name: name.to_string(),
        country: country("SG").ok_or(DomainError::InvalidField { param: "country", reason: "bad country" })?,
        default_currency: currency,
        settlement_currency: Some(currency),
        tier,
        fees,
        now,
    };
    let events = MerchantAggregate::decide(&None, command, &context)?;
    let state = MerchantAggregate::fold(&events).ok_or(DomainError::MerchantNotFound { param: None })?;
    Ok((state, events))
}

fn country(code: &str) -> Option<CountryCode> {
    code.parse().ok()
}

/// One payment's stream: its state and every event `decide` produced so far.
#[derive(Debug, Clone)]
pub struct PaymentFlow {
    pub payment_id: PaymentId,
    pub state: Option<Payment>,
    pub events: Vec<PaymentEvent>,
    context: Context,
}

impl PaymentFlow {
    /// Starts a payment (`Initiate`).
    pub fn initiate(
        payment_id: PaymentId,
        merchant: &Merchant,
        amount: Money,
        capture_method: CaptureMethod,
        method: PaymentMethodInput,
        customer: Customer,
        now: Timestamp,
    ) -> Result<PaymentFlow, DomainError> {
        let mut flow = PaymentFlow {
            payment_id,
            state: None,
            events: Vec::new(),
            context: Context::new(SIM_FINGERPRINT_KEY.to_vec()),
        };
        flow.run(PaymentCommand::Initiate(Box::new(InitiatePayment {
            payment_id,
            merchant: Some(merchant.clone()),
            amount,
            capture_method,
            method,
            customer,
            description: None,
            metadata: BTreeMap::new(),
            daily_volume: Money::zero(amount.currency),
            signals: RiskSignals::default(),
            now,
        })))?;
        Ok(flow)
    }

    /// Decides `command` on the current state; on success records and applies the events.
    pub fn run(&mut self, command: PaymentCommand) -> Result<Vec<PaymentEvent>, DomainError> {
        let events = PaymentAggregate::decide(&self.state, command, &self.context)?;
        for event in &events {
            self.state = PaymentAggregate::evolve(self.state.take(), event);
        }
        self.events.extend(events.iter().cloned());
        Ok(events)
    }

    pub fn status(&self) -> Option<PaymentStatus> {
        self.state.as_ref().map(Payment::status)
    }

    pub fn stream(&self) -> String {
        payment_stream(self.payment_id)
    }

    pub fn authorize(&mut self, now: Timestamp) -> Result<Vec<PaymentEvent>, DomainError> {
        let reference = format!("acq_{}", self.payment_id.as_uuid().simple());
        self.run(PaymentCommand::RecordAuthorization {
            outcome: AcquirerOutcome::Approved { acquirer_reference: reference },
            now,
        })
    }

    pub fn decline(&mut self, code: DeclineCode, now: Timestamp) -> Result<Vec<PaymentEvent>, DomainError> {
        self.run(PaymentCommand::RecordAuthorization { outcome: AcquirerOutcome::Declined { decline_code: code }, now })
    }

    pub fn capture(
        &mut self,
        capture_id: CaptureId,
        amount_minor: Option<i64>,
        now: Timestamp,
    ) -> Result<Vec<PaymentEvent>, DomainError> {
        self.run(PaymentCommand::Capture {
            capture_id,
            amount: amount_minor.map(AmountInput::minor),
            final_capture: false,
            now,
        })
    }

    pub fn refund(
        &mut self,
        refund_id: RefundId,
        amount_minor: Option<i64>,
        now: Timestamp,
    ) -> Result<Vec<PaymentEvent>, DomainError> {
        self.run(PaymentCommand::Refund { refund_id, amount: amount_minor.map(AmountInput::minor), reason: None, now })
    }

    pub fn dispute(
        &mut self,
        dispute_id: DisputeId,
        amount_minor: i64,
        now: Timestamp,
    ) -> Result<Vec<PaymentEvent>, DomainError> {
        self.run(PaymentCommand::OpenDispute {
            dispute_id,
            amount: AmountInput::minor(amount_minor),
            reason: "fraudulent".into(),
            now,
        })
    }

    pub fn resolve(
        &mut self,
        dispute_id: DisputeId,
        outcome: DisputeOutcome,
        now: Timestamp,
    ) -> Result<Vec<PaymentEvent>, DomainError> {
        self.run(PaymentCommand::ResolveDispute { dispute_id, outcome, now })
    }

    pub fn settle(&mut self, batch_id: BatchId, now: Timestamp) -> Result<Vec<PaymentEvent>, DomainError> {
        self.run(PaymentCommand::Settle { batch_id, now })
    }

    /// The events encoded for an append.
    pub fn encoded(&self) -> Vec<NewEvent> {
        self.events.iter().map(encode).collect()
    }
}

/// SplitMix64: small, fast, good enough for test data; seeded, so reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn uuid(&mut self) -> Uuid {
        Uuid::from_u64_pair(self.next_u64(), self.next_u64())
    }

    /// A UUIDv7 of the instant `at` (as the write side mints them with `now_v7`).
    pub fn uuid_v7(&mut self, at: Timestamp) -> Uuid {
        let ms = u64::try_from(at.as_datetime().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let mut random = [0u8; 10];
        random[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        random[8..].copy_from_slice(&self.next_u64().to_be_bytes()[..2]);
        uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid()
    }
}

/// A merchant's stream id and its onboarding events.
pub type MerchantStream = (String, Vec<MerchantEvent>);

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    pub merchants: usize,
    pub currencies: Vec<Currency>,
    /// Time of the first payment; each payment starts a little later than the last.
    pub start: Timestamp,
    /// Milliseconds between two payments' starts.
    pub spacing_ms: i64,
    /// Percent of captured payments refunded (in part or in full).
    pub refund_percent: u64,
    /// Percent of captured payments disputed.
    pub dispute_percent: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 7,
            merchants: 20,
            currencies: vec![Currency::USD, Currency::EUR, Currency::CNY, Currency::JPY, Currency::KWD],
            start: Timestamp::from_unix_seconds(1_798_675_200).unwrap_or_else(epoch), // 2026-12-31T00:00:00Z
            spacing_ms: 400,
            refund_percent: 12,
            dispute_percent: 4,
        }
    }
}

fn epoch() -> Timestamp {
    Timestamp::from_datetime(time::OffsetDateTime::UNIX_EPOCH)
}

/// Generates merchants and then payment lifecycles: approvals and declines, reviews,
/// automatic and manual (partial) captures, voids, expiries, refunds, disputes won and
/// lost, settlements, over several currencies and method types.
#[derive(Debug, Clone)]
pub struct Simulator {
    rng: Rng,
    options: SimOptions,
    merchants: Vec<Merchant>,
    payments: u64,
}

impl Simulator {
    /// The simulator and the merchants' onboarding events (append them first).
    pub fn new(options: SimOptions) -> Result<(Simulator, Vec<MerchantStream>), DomainError> {
        let mut rng = Rng::new(options.seed);
        let mut merchants = Vec::new();
        let mut streams = Vec::new();
        for i in 0..options.merchants.max(1) {
            let id = MerchantId::from_uuid(rng.uuid_v7(options.start));
            let tier = Tier::ALL[i % Tier::ALL.len()];
            let currency =
                options.currencies.get(i % options.currencies.len().max(1)).copied().unwrap_or(Currency::USD);
            let fees = FeeSchedule { percent_bps: 150 + 25 * (i as u32 % 8), fixed_minor: [0, 30, 100][i % 3] };
            let (merchant, events) = onboard(id, &format!("Merchant {i}"), tier, currency, fees, options.start)?;
            streams.push((merchant_stream(id), events));
            merchants.push(merchant);
        }
        Ok((Simulator { rng, options, merchants, payments: 0 }, streams))
    }

    pub fn merchants(&self) -> &[Merchant] {
        &self.merchants
    }

    /// The next payment's whole life, as its stream id and events.
    pub fn next_payment(&mut self) -> Result<PaymentFlow, DomainError> {
        let n = self.payments;
        self.payments += 1;
        let rng = &mut self.rng;
        let merchant = &self.merchants[rng.below(self.merchants.len() as u64) as usize];
        // Payments in any of the simulated currencies, mostly the merchant's own.
        let currency = if rng.chance(70) {
            merchant.default_currency
        } else {
            self.options.currencies[rng.below(self.options.currencies.len() as u64) as usize]
        };
        let limit_major = merchant.tier.limits().max_single_payment_major;
        // Mostly small tickets; about 2% above half the tier limit (they go to review).
        let major = if rng.chance(2) { limit_major / 2 + 1 + rng.below(10) as i64 } else { 1 + rng.below(200) as i64 };
        let amount = Money::new(
            major * currency.minor_per_major() + rng.below(100) as i64 % currency.minor_per_major().max(1),
            currency,
        );
        let method = match rng.below(20) {
            0..=11 => card_number(
                ["4242424242424242", "5555555555554444", "6200000000000005", "378282246310005"][rng.below(4) as usize],
            ),
            12..=14 => wallet(
                [WalletProvider::Alipay, WalletProvider::WechatPay, WalletProvider::UnionpayQuickpass]
                    [rng.below(3) as usize],
                &format!("w{}", rng.below(5_000)),
            ),
            15..=16 => qr_code(QrScheme::Emvco, &format!("payer{}", rng.below(5_000))),
            17..=18 => bank_transfer(&format!("6222{:08}", rng.below(100_000))),
            _ => nfc(&format!("tok_{:012}", rng.below(1_000_000))),
        };
        let customer_n = rng.below(50_000);
        let customer = Customer {
            id: rng.chance(80).then(|| format!("cus_{customer_n}")),
            email: rng.chance(60).then(|| format!("customer{customer_n}@example.com")),
            ip: rng.chance(90).then_some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, (customer_n % 250) as u8))),
            country: country(if rng.chance(90) { "SG" } else { "US" }),
        };
        let capture_method = if rng.chance(75) { CaptureMethod::Automatic } else { CaptureMethod::Manual };
        let start =
            self.options.start.plus(time::Duration::milliseconds(self.options.spacing_ms.saturating_mul(n as i64)));
        let at = |minutes: i64| start.plus(time::Duration::minutes(minutes));
        let payment_id = PaymentId::from_uuid(rng.uuid_v7(start));
        let mut flow = PaymentFlow::initiate(payment_id, merchant, amount, capture_method, method, customer, start)?;
        if flow.status() == Some(PaymentStatus::Declined) {
            return Ok(flow);
        }
        if rng.chance(8) {
            let code = [DeclineCode::CardDeclined, DeclineCode::InsufficientFunds, DeclineCode::InstrumentDeclined]
                [rng.below(3) as usize];
            flow.decline(code, at(0))?;
            return Ok(flow);
        }
        flow.authorize(at(0))?;
        if flow.status() == Some(PaymentStatus::RequiresReview) {
            let decision = if rng.chance(70) { ReviewDecision::Approve } else { ReviewDecision::Reject };
            flow.run(PaymentCommand::Review { decision, reason: None, now: at(30) })?;
        }
        if flow.status() == Some(PaymentStatus::Authorized) {
            match rng.below(10) {
                0 => {
                    flow.run(PaymentCommand::Void { reason: None, now: at(60) })?;
                }
                1 => {
                    flow.run(PaymentCommand::ExpireAuthorization { now: at(60 * 24 * 8) })?;
                }
                2..=4 => {
                    // Partial capture, then the rest (or expiry of the rest).
                    let part = (amount.amount_minor / 2).max(1);
                    flow.capture(CaptureId::from_uuid(rng.uuid()), Some(part), at(60))?;
                    let capturable = flow.state.as_ref().map_or(0, |p| p.figures.amount_capturable);
                    if capturable > 0 && rng.chance(60) {
                        flow.capture(CaptureId::from_uuid(rng.uuid()), None, at(120))?;
                    } else if capturable > 0 {
                        flow.run(PaymentCommand::ExpireAuthorization { now: at(60 * 24 * 8) })?;
                    }
                }
                _ => {
                    flow.capture(CaptureId::from_uuid(rng.uuid()), None, at(60))?;
                }
            }
        }
        let captured = flow.state.as_ref().map_or(0, |p| p.figures.amount_captured);
        if captured == 0 {
            return Ok(flow);
        }
        if rng.chance(85) {
            flow.settle(BatchId::from_uuid(rng.uuid()), at(60 * 24))?;
        }
        if rng.chance(self.options.refund_percent) {
            let amount = if rng.chance(50) { None } else { Some((captured / 3).max(1)) };
            flow.refund(RefundId::from_uuid(rng.uuid()), amount, at(60 * 30))?;
        }
        let disputable = match flow.state.as_ref() {
            Some(p) => p.amount_disputable()?,
            None => 0,
        };
        if disputable > 0 && rng.chance(self.options.dispute_percent) {
            let dispute_id = DisputeId::from_uuid(rng.uuid());
            flow.dispute(dispute_id, disputable, at(60 * 24 * 10))?;
            if rng.chance(80) {
                let outcome = if rng.chance(50) { DisputeOutcome::Won } else { DisputeOutcome::Lost };
                flow.resolve(dispute_id, outcome, at(60 * 24 * 40))?;
            }
        }
        Ok(flow)
    }
}
