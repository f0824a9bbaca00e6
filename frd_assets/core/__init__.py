from frd_assets.core import third_party_logs

# Before any module of the project can import peft and with it bitsandbytes (see third_party_logs).
third_party_logs.install()
