//! Sources: where deliveries come from. The MQTT consumer and the device gateway
//! each hand [`crate::pipeline::delivery::Delivery`]s with an ack handle to the
//! pipeline; [`Acks`] sends every ack back to its source after the writer commits.

pub mod device;
pub mod gateway;
pub mod mqtt;

use crate::pipeline::delivery::Ack;
use crate::store::writer::Acker;

/// Sends the writer's acks back to the sources they came from.
#[derive(Clone, Default)]
pub struct Acks {
    /// The MQTT consumer's connections (none when MQTT is off).
    pub mqtt: Option<mqtt::MqttAcker>,
}

impl Acker for Acks {
    type Token = Ack;

    fn try_ack(&self, token: Ack) -> Result<(), Ack> {
        match token {
            Ack::Mqtt(conn, p) => match &self.mqtt {
                Some(m) => m.try_ack((conn, p)).map_err(|(c, p)| Ack::Mqtt(c, p)),
                None => Ok(()),
            },
            // The connection task waits on it; gone means the device disconnected
            // and will resend what it was not answered for.
            Ack::Device(tx) => {
                let _ = tx.send(());
                Ok(())
            }
        }
    }

    async fn ack(&self, token: Ack) {
        match token {
            Ack::Mqtt(conn, p) => {
                if let Some(m) = &self.mqtt {
                    m.ack((conn, p)).await;
                }
            }
            Ack::Device(tx) => {
                let _ = tx.send(());
            }
        }
    }
}
