"""The shared base of genfeedback: vision towers behind one spec string, checkpoint
conversion, and the offline tiny zoo. `enhance`, `mllm_train` and `eval` import this
package; it imports none of them."""
