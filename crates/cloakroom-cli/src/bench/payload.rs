//! The ~1 KiB of realistic session data every benchmark session carries
//! besides `hits`, so that a cycle encodes, stores and decodes what a real
//! session would (`docs/BENCHMARKS.md`, "The request cycle").

use serde::{Deserialize, Serialize};

/// One line of the shopping cart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartItem {
    /// Product code.
    pub sku: String,
    /// Quantity.
    pub qty: u32,
    /// Unit price in cents.
    pub price_cents: u64,
}

/// The session contents besides `hits`, as named key/value pairs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Logged-in user.
    pub user_id: u64,
    /// CSRF token: 43 characters, like a base64url-encoded 256-bit secret.
    pub csrf_token: String,
    /// Preferred locale.
    pub locale: String,
    /// One-shot message for the next page.
    pub flash: String,
    /// Eight cart items.
    pub cart: Vec<CartItem>,
}

/// Key names, shared by every library under test.
pub const HITS: &str = "hits";
/// Key of [`Payload::user_id`].
pub const USER_ID: &str = "user_id";
/// Key of [`Payload::csrf_token`].
pub const CSRF_TOKEN: &str = "csrf_token";
/// Key of [`Payload::locale`].
pub const LOCALE: &str = "locale";
/// Key of [`Payload::flash`].
pub const FLASH: &str = "flash";
/// Key of [`Payload::cart`].
pub const CART: &str = "cart";

const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const PRODUCTS: [&str; 8] = [
    "merino-wool-crew-neck-sweater-charcoal",
    "organic-cotton-oxford-shirt-light-blue",
    "waxed-canvas-weekender-bag-olive-green",
    "stainless-steel-insulated-bottle-750ml",
    "recycled-nylon-packable-rain-jacket-navy",
    "full-grain-leather-card-wallet-cognac",
    "bamboo-fibre-ankle-socks-three-pack-mixed",
    "cast-iron-skillet-pre-seasoned-26cm",
];

impl Payload {
    /// A plausible payload for a random user.
    pub fn random() -> Self {
        let csrf_token = (0..43)
            .map(|_| char::from(BASE64URL[fastrand::usize(..BASE64URL.len())]))
            .collect();
        let cart = PRODUCTS
            .iter()
            .enumerate()
            .map(|(i, name)| CartItem {
                sku: format!("SKU-{:06}-{name}", fastrand::u32(..1_000_000)),
                qty: 1 + (i as u32 % 3),
                price_cents: 499 + fastrand::u64(..20_000),
            })
            .collect();
        Payload {
            user_id: fastrand::u64(1..10_000_000),
            csrf_token,
            locale: "en-GB".to_owned(),
            flash: "Your order #A-20931 has been placed. A confirmation e-mail with the \
                    tracking number is on its way; you can review or change the delivery \
                    slot from your account page until 18:00 today."
                .to_owned(),
            cart,
        }
    }

    /// Store the payload and `hits = 0` into a cloakroom session's data.
    pub fn fill(&self, data: &mut cloakroom::SessionData) -> cloakroom::Result<()> {
        data.insert(HITS, &0u64)?;
        data.insert(USER_ID, &self.user_id)?;
        data.insert(CSRF_TOKEN, &self.csrf_token)?;
        data.insert(LOCALE, &self.locale)?;
        data.insert(FLASH, &self.flash)?;
        data.insert(CART, &self.cart)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_about_one_kib() {
        let mut d = cloakroom::SessionData::new();
        Payload::random().fill(&mut d).unwrap();
        let n = d.encode().len();
        assert!((900..=1300).contains(&n), "encoded payload is {n} bytes");
        assert_eq!(Payload::random().csrf_token.len(), 43);
    }
}
