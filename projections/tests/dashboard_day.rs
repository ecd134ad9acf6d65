//! A scripted day of traffic for one merchant, driven through the domain's `decide`,
//! against dashboard, search, overview and ledger figures worked out by hand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use paystream_domain::id::{BatchId, CaptureId, DisputeId, MerchantId, PaymentId, RefundId};
use paystream_domain::merchant::{FeeSchedule, Tier};
use paystream_domain::method::{QrScheme, WalletProvider};
use paystream_domain::payment::{CaptureMethod, Customer, DeclineCode, DisputeOutcome, PaymentCommand, PaymentStatus};
use paystream_domain::time::Timestamp;
use paystream_domain::{Currency, Money};
use paystream_projections::dashboard::{Balance, DashboardQuery};
use paystream_projections::ledger::Account;
use paystream_projections::overview::{Dimension, OverviewQuery};
use paystream_projections::search::SearchQuery;
use paystream_projections::sim::{self, encode, PaymentFlow};
use paystream_projections::{Counters, Derived, ProjectionName};
use paystream_store::{EventStore, ExpectedVersion};
use uuid::Uuid;

fn at(hour: u32, minute: u32) -> Timestamp {
    Timestamp::parse_rfc3339(&format!("2027-03-01T{hour:02}:{minute:02}:00Z")).unwrap()
}

fn id(n: u128) -> Uuid {
    // UUIDv7-shaped ids of 2027-03-01 (time bits), distinct per n.
    Uuid::from_u128((0x0195_4e6f_5800_u128 << 80) | (0x7000 << 64) | (0x8000_0000_0000_0000 | n))
}

fn customer(n: u32) -> Customer {
    Customer {
        id: Some(format!("cus_{n}")),
        email: Some(format!("Buyer{n}@Example.com")),
        ip: Some("203.0.113.7".parse().unwrap()),
        country: Some("SG".parse().unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_day_gives_the_dashboard_worked_out_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let projections = open_projections(dir.path(), "projections", &store);
    let running = projections.start();

    // Tier A, USD, 2.90% + 0.30 on the first capture.
    let merchant_id = MerchantId::from_uuid(id(1));
    let fees = FeeSchedule { percent_bps: 290, fixed_minor: 30 };
    let (merchant, events) = sim::onboard(merchant_id, "Lotus Tea", Tier::A, Currency::USD, fees, at(0, 5)).unwrap();
    store
        .append(&sim::merchant_stream(merchant_id), ExpectedVersion::NoStream, events.iter().map(encode).collect())
        .await
        .unwrap();

    let usd = |m| Money::new(m, Currency::USD);
    let pay = |n: u128, amount: Money, capture: CaptureMethod, method, hour| {
        PaymentFlow::initiate(
            PaymentId::from_uuid(id(100 + n)),
            &merchant,
            amount,
            capture,
            method,
            customer(n as u32),
            at(hour, 0),
        )
        .unwrap()
    };
    let mut flows = Vec::new();
    // P1: card 100.00, automatic: captured 10000, fee 290 + 30 = 320; settled at 23:00.
    let mut p1 = pay(1, usd(10_000), CaptureMethod::Automatic, sim::card(), 9);
    p1.authorize(at(9, 1)).unwrap();
    p1.settle(BatchId::from_uuid(id(900)), at(23, 0)).unwrap();
    flows.push(p1);
    // P2: card 50.00, declined by the issuer.
    let mut p2 = pay(2, usd(5_000), CaptureMethod::Automatic, sim::card(), 10);
    p2.decline(DeclineCode::InsufficientFunds, at(10, 1)).unwrap();
    flows.push(p2);
    // P3: wallet 200.00, manual: captures 150.00 (fee 435 + 30 = 465), refunds 50.00.
    let mut p3 = pay(3, usd(20_000), CaptureMethod::Manual, sim::wallet(WalletProvider::Alipay, "lotus88"), 11);
    p3.authorize(at(11, 1)).unwrap();
    p3.capture(CaptureId::from_uuid(id(301)), Some(15_000), at(12, 0)).unwrap();
    p3.refund(RefundId::from_uuid(id(302)), Some(5_000), at(15, 0)).unwrap();
    flows.push(p3);
    // P4: QR 80.00, automatic: captured 8000 (fee 232 + 30 = 262), disputed in full, lost.
    let mut p4 = pay(4, usd(8_000), CaptureMethod::Automatic, sim::qr_code(QrScheme::Emvco, "payer4"), 12);
    p4.authorize(at(12, 1)).unwrap();
    p4.dispute(DisputeId::from_uuid(id(401)), 8_000, at(16, 0)).unwrap();
    p4.resolve(DisputeId::from_uuid(id(401)), DisputeOutcome::Lost, at(18, 0)).unwrap();
    flows.push(p4);
    // P5: card 30.00, automatic: captured 3000 (fee 87 + 30 = 117), refunded in full.
    let mut p5 = pay(5, usd(3_000), CaptureMethod::Automatic, sim::card(), 13);
    p5.authorize(at(13, 1)).unwrap();
    p5.refund(RefundId::from_uuid(id(501)), None, at(17, 0)).unwrap();
    flows.push(p5);
    // P6: bank transfer 40.00, manual: authorized, then voided.
    let mut p6 = pay(6, usd(4_000), CaptureMethod::Manual, sim::bank_transfer("62220001"), 14);
    p6.authorize(at(14, 1)).unwrap();
    p6.run(PaymentCommand::Void { reason: None, now: at(14, 30) }).unwrap();
    flows.push(p6);
    // P7: card 25.00 EUR, automatic: captured 2500, fee 72.5 -> 73 + 30 = 103; settled.
    let mut p7 = pay(7, Money::new(2_500, Currency::EUR), CaptureMethod::Automatic, sim::card(), 15);
    p7.authorize(at(15, 1)).unwrap();
    p7.settle(BatchId::from_uuid(id(900)), at(23, 0)).unwrap();
    flows.push(p7);

    let mut head = 0;
    for flow in &flows {
        head = store.append(&flow.stream(), ExpectedVersion::NoStream, flow.encoded()).await.unwrap().last_position;
    }
    wait_all(&projections, head).await;
    projections.wait_for_default(ProjectionName::MerchantDashboard, head).await.unwrap();

    let day = time::macros::date!(2027 - 03 - 01);
    let report = projections.dashboard(&DashboardQuery { merchant_id, from: day, to: day, currency: None }).unwrap();
    let usd_day = Counters {
        attempted_count: 6,
        authorized_count: 5,
        declined_count: 1,
        captured_count: 4,
        refunded_count: 2,
        disputed_count: 1,
        authorized_minor: 45_000,
        captured_minor: 36_000,
        refunded_minor: 8_000,
        disputed_minor: 8_000,
        dispute_won_minor: 0,
        dispute_lost_minor: 8_000,
        fees_minor: 1_164,
        settled_minor: 10_000,
        settled_fees_minor: 320,
    };
    let usd_derived = Derived {
        net_minor: 18_836,
        approval_rate_bps: Some(8_333),
        refund_rate_bps: Some(2_222),
        dispute_rate_bps: Some(2_500),
        average_ticket_minor: Some(9_000),
    };
    let eur_day = Counters {
        attempted_count: 1,
        authorized_count: 1,
        captured_count: 1,
        authorized_minor: 2_500,
        captured_minor: 2_500,
        fees_minor: 103,
        settled_minor: 2_500,
        settled_fees_minor: 103,
        ..Counters::default()
    };
    let eur_derived = Derived {
        net_minor: 2_397,
        approval_rate_bps: Some(10_000),
        refund_rate_bps: Some(0),
        dispute_rate_bps: Some(0),
        average_ticket_minor: Some(2_500),
    };
    assert_eq!(report.days.len(), 2);
    let (eur, usd_row) = (&report.days[0], &report.days[1]);
    assert_eq!(
        (eur.date.as_str(), eur.currency, eur.counters, eur.derived),
        ("2027-03-01", Currency::EUR, eur_day, eur_derived)
    );
    assert_eq!(
        (usd_row.date.as_str(), usd_row.currency, usd_row.counters, usd_row.derived),
        ("2027-03-01", Currency::USD, usd_day, usd_derived)
    );
    let mix: Vec<(String, i64)> = usd_row.method_mix.clone().into_iter().collect();
    assert_eq!(
        mix,
        vec![
            ("bank_transfer".into(), 1),
            ("card".into(), 3),
            ("nfc".into(), 0),
            ("qr_code".into(), 1),
            ("wallet".into(), 1)
        ]
    );
    assert_eq!(report.totals.len(), 2);
    assert_eq!((report.totals[1].counters, report.totals[1].derived), (usd_day, usd_derived));
    assert_eq!(
        report.balances,
        vec![
            Balance {
                currency: Currency::EUR,
                pending_minor: 0,
                reserved_minor: 0,
                available_minor: 2_397,
                paid_out_minor: 0
            },
            // pending (36000 - 10000) - (1164 - 320); available (10000 - 320) - 8000 - 8000.
            Balance {
                currency: Currency::USD,
                pending_minor: 25_156,
                reserved_minor: 0,
                available_minor: -6_320,
                paid_out_minor: 0
            },
        ]
    );
    // The JSON shape the API returns.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["days"][1]["approval_rate_bps"], 8_333);
    assert_eq!(json["days"][1]["method_mix"]["card"], 3);
    assert_eq!(json["balances"][1]["available_minor"], -6_320);
    // Another day, or another currency, shows nothing of it.
    let next = time::macros::date!(2027 - 03 - 02);
    let empty = projections.dashboard(&DashboardQuery { merchant_id, from: next, to: next, currency: None }).unwrap();
    assert!(empty.days.is_empty() && empty.totals.is_empty());
    assert_eq!(empty.balances.len(), 2, "balances carry over");

    // Payment search: statuses equal the domain's, newest first, filters, pagination.
    let page =
        projections.search_payments(&SearchQuery { merchant_id: Some(merchant_id), ..Default::default() }).unwrap();
    let got: Vec<(PaymentId, PaymentStatus)> = page.data.iter().map(|s| (s.id, s.status)).collect();
    let want: Vec<(PaymentId, PaymentStatus)> =
        flows.iter().rev().map(|f| (f.payment_id, f.status().unwrap())).collect();
    assert_eq!(got, want);
    assert_eq!(
        want.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        [
            PaymentStatus::Captured,
            PaymentStatus::Voided,
            PaymentStatus::Refunded,
            PaymentStatus::Captured,
            PaymentStatus::Captured,
            PaymentStatus::Declined,
            PaymentStatus::Captured
        ]
    );
    assert!(!page.has_more);
    let first = projections
        .search_payments(&SearchQuery { status: vec![PaymentStatus::Captured], limit: Some(2), ..Default::default() })
        .unwrap();
    assert_eq!(first.data.iter().map(|s| s.id).collect::<Vec<_>>(), vec![flows[6].payment_id, flows[3].payment_id]);
    assert!(first.has_more);
    let second = projections
        .search_payments(&SearchQuery {
            status: vec![PaymentStatus::Captured],
            limit: Some(2),
            starting_after: first.next_cursor,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(second.data.iter().map(|s| s.id).collect::<Vec<_>>(), vec![flows[2].payment_id, flows[0].payment_id]);
    assert!(!second.has_more);
    let by_email = projections
        .search_payments(&SearchQuery { customer_email: Some("buyer3@example.com".into()), ..Default::default() })
        .unwrap();
    assert_eq!(by_email.data.len(), 1);
    assert_eq!((by_email.data[0].amount_captured_minor, by_email.data[0].amount_refunded_minor), (15_000, 5_000));
    let wallets = projections
        .search_payments(&SearchQuery {
            method_type: vec!["wallet".into()],
            min_amount_minor: Some(10_000),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(wallets.data.len(), 1);
    let other = MerchantId::from_uuid(id(2));
    let none = projections.search_payments(&SearchQuery { merchant_id: Some(other), ..Default::default() }).unwrap();
    assert!(none.data.is_empty());

    // Overview by method.
    let overview = projections
        .overview(&OverviewQuery {
            from: day,
            to: day,
            group_by: vec![Dimension::Method],
            merchant_id: None,
            currency: vec![Currency::USD],
        })
        .unwrap();
    let by_method: Vec<(String, i64, i64)> = overview
        .rows
        .iter()
        .map(|r| (r.method_type.clone().unwrap(), r.counters.attempted_count, r.counters.captured_minor))
        .collect();
    assert_eq!(
        by_method,
        vec![
            ("card".into(), 3, 13_000),
            ("bank_transfer".into(), 1, 0),
            ("wallet".into(), 1, 15_000),
            ("qr_code".into(), 1, 8_000)
        ]
    );

    // Ledger: balances by hand, and a zero trial balance.
    let accounts = projections.ledger_accounts(Some(Currency::USD)).unwrap();
    let balance = |a: Account| accounts.iter().find(|x| x.account == a).map_or(0, |x| x.balance_minor);
    assert_eq!(balance(Account::AcquirerReceivable), 36_000 - 10_000);
    assert_eq!(balance(Account::SettlementCash), 10_000);
    assert_eq!(balance(Account::PlatformFeeRevenue), 1_164);
    assert_eq!(balance(Account::MerchantPayable), 18_836);
    assert_eq!(balance(Account::Refunds), 8_000);
    assert_eq!(balance(Account::Chargebacks), 8_000);
    assert_eq!(balance(Account::DisputeReserve), 0);
    let trial = projections.trial_balance().unwrap();
    assert!(trial.balanced);
    assert!(trial.currencies.iter().all(|c| c.difference_minor == 0 && c.balanced));

    // CSV export of every model.
    for name in ProjectionName::ALL {
        let mut out = Vec::new();
        projections.export_csv(name, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.lines().count() > 1, "{name}: {text}");
    }
    let mut out = Vec::new();
    projections.export_csv(ProjectionName::MerchantDashboard, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(",2027-03-01,USD,6,5,1,4,2,1,45000,36000,8000,8000,0,8000,1164,10000,320,18836,8333,2222,2500,9000,3,1,1,1,0"), "{text}");

    running.stop().await;
    let _ = Duration::ZERO;
}
