"""The demo catalog `leadscout dev` loads: one brand, advisor, agent, channel, template, lead."""

from __future__ import annotations

from typing import Any

DEMO_BRAND_ID = "0d4e6f10-0000-4000-8000-000000000001"
DEMO_USER_ID = "0d4e6f10-0000-4000-8000-000000000002"
DEMO_AGENT_ID = "0d4e6f10-0000-4000-8000-000000000003"
DEMO_CHANNEL_ID = "0d4e6f10-0000-4000-8000-000000000004"
DEMO_TEMPLATE_ID = "0d4e6f10-0000-4000-8000-000000000005"
DEMO_CONTACT_ID = "0d4e6f10-0000-4000-8000-000000000006"

DEMO_CATALOG: dict[str, Any] = {
    "brands": [{"id": DEMO_BRAND_ID, "name": "Acme Motors"}],
    "users": [
        {
            "id": DEMO_USER_ID,
            "name": "Ana Ruiz",
            "email": "ana@acme.test",
            "role": "advisor",
            "active": True,
        }
    ],
    "agents": [{"id": DEMO_AGENT_ID, "name": "Scout", "kind": "prospection", "active": True}],
    "channels": [
        {
            "id": DEMO_CHANNEL_ID,
            "type": "whatsapp",
            "phoneNumber": "+5215512345678",
            "brandId": DEMO_BRAND_ID,
            "agentId": DEMO_AGENT_ID,
            "defaultAdvisorId": DEMO_USER_ID,
            "active": True,
            "dailyLimit": 1000,
            "priority": 0,
        }
    ],
    "templates": [
        {
            "id": DEMO_TEMPLATE_ID,
            "name": "welcome_v2",
            "language": "es_MX",
            "category": "MARKETING",
            "status": "APPROVED",
            "body": "Hola {{1}}, soy {{2}} de Acme",
            "brandId": None,
        }
    ],
    "contacts": [
        {
            "id": DEMO_CONTACT_ID,
            "name": "Luis",
            "phone": "+5215598765432",
            "email": None,
            "optedOut": False,
        }
    ],
}
