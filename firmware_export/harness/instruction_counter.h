/* Instructions executed, read from SysTick.
 *
 * Under QEMU's `-icount shift=0` the virtual clock advances one nanosecond per executed instruction, so a
 * SysTick running from the core clock ticks once every (1e9 / clock_hz) instructions: 40 on mps2-an385/an386/
 * an500 (25 MHz), 50 on mps2-an505 (20 MHz), 31.25 on mps3-an547 (32 MHz). The build passes that ratio as
 * INSTRUCTIONS_PER_TICK_NUM / INSTRUCTIONS_PER_TICK_DEN. These are instructions, not cycles: QEMU models no
 * pipeline, wait states or caches. */
#ifndef TINYKD_HARNESS_INSTRUCTION_COUNTER_H_
#define TINYKD_HARNESS_INSTRUCTION_COUNTER_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The largest SysTick reload (24 bits): the fewest interrupts while counting. */
#define INSTRUCTION_COUNTER_MAX_RELOAD 0x00FFFFFFu
/* Starts SysTick from the core clock, wrapping every reload_ticks + 1 ticks; its interrupt counts the wraps. */
void instruction_counter_start(uint32_t reload_ticks);
/* SysTick ticks since instruction_counter_start() (64 bits: never wraps in a run). */
uint64_t instruction_counter_ticks(void);
/* Ticks converted to instructions with the core's ratio. */
uint64_t instruction_counter_instructions(uint64_t ticks);
void SysTick_Handler(void);

#ifdef __cplusplus
}
#endif

#endif /* TINYKD_HARNESS_INSTRUCTION_COUNTER_H_ */
