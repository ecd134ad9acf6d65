//! OpenAPI schemas (utoipa) of the domain types that appear in the HTTP API's
//! bodies, for the types whose JSON form is written by hand (ids, timestamps,
//! currencies, country codes, the payment method input). Plain enums and
//! structs derive theirs where they are defined. Only with the `openapi`
//! feature.

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{KnownFormat, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::country::CountryCode;
use crate::id::{ApiKeyId, CaptureId, DisputeId, MerchantId, PaymentId, RefundId};
use crate::method::{BankTransferInput, CardInput, NfcInput, PaymentMethodInput, QrCodeInput, WalletInput};
use crate::money::Currency;
use crate::time::Timestamp;

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

macro_rules! id_schema {
    ($($name:ident = $prefix:literal),*) => {$(
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                string()
                    .pattern(Some(concat!("^", $prefix, "_[0-9a-f]{32}$")))
                    .description(Some(concat!("`", $prefix, "_` and 32 hex digits")))
                    .into()
            }
        }
        impl ToSchema for $name {}
    )*};
}

id_schema!(
    MerchantId = "mer",
    ApiKeyId = "key",
    PaymentId = "pay",
    CaptureId = "cap",
    RefundId = "re",
    DisputeId = "dp"
);

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        string()
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("An RFC 3339 time in UTC, to the nanosecond"))
            .into()
    }
}
impl ToSchema for Timestamp {}

impl PartialSchema for CountryCode {
    fn schema() -> RefOr<Schema> {
        string()
            .pattern(Some("^[A-Za-z]{2}$"))
            .description(Some("An ISO 3166-1 alpha-2 country code (written upper case)"))
            .into()
    }
}
impl ToSchema for CountryCode {}

impl PartialSchema for Currency {
    fn schema() -> RefOr<Schema> {
        string()
            .enum_values(Some(Currency::ALL.iter().map(|c| c.code())))
            .description(Some("An ISO 4217 currency code"))
            .into()
    }
}
impl ToSchema for Currency {}

/// `{"type": "<type>", "<type>": {...}}` for one method.
fn method_variant<T: ToSchema>(kind: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .property("type", string().enum_values(Some([kind])))
        .required("type")
        .property(kind, RefOr::Ref(utoipa::openapi::Ref::from_schema_name(T::name())))
        .required(kind)
        .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(false)))
}

impl PartialSchema for PaymentMethodInput {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(method_variant::<CardInput>("card"))
            .item(method_variant::<BankTransferInput>("bank_transfer"))
            .item(method_variant::<WalletInput>("wallet"))
            .item(method_variant::<QrCodeInput>("qr_code"))
            .item(method_variant::<NfcInput>("nfc"))
            .description(Some("The instrument: `type` names it, and the object of that name describes it"))
            .into()
    }
}

impl ToSchema for PaymentMethodInput {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        for (name, schema) in [
            (CardInput::name(), CardInput::schema()),
            (BankTransferInput::name(), BankTransferInput::schema()),
            (WalletInput::name(), WalletInput::schema()),
            (QrCodeInput::name(), QrCodeInput::schema()),
            (NfcInput::name(), NfcInput::schema()),
        ] {
            schemas.push((name.into_owned(), schema));
        }
        CardInput::schemas(schemas);
        WalletInput::schemas(schemas);
        QrCodeInput::schemas(schemas);
    }
}
