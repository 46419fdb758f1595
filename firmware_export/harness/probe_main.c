/* The machine probe: proves start-up, memory map, semihosting output and instruction counting on one emulated
 * core without TFLM. It times a loop of exactly 2 instructions per iteration (subs + bne) and prints what
 * SysTick counted, so the host can check the ticks-to-instructions ratio of the machine. SysTick wraps every
 * 65,536 ticks here, so the count also proves the wrap interrupt (the harness wraps every 2^24 ticks). */
#include <stdio.h>

#include "instruction_counter.h"

#define ITERATIONS 10000000u

int main(void) {
  printf("tinykd-harness probe\n");
  instruction_counter_start(0xFFFFu);
  uint32_t count = ITERATIONS;
  const uint64_t start = instruction_counter_ticks();
  __asm volatile("1: subs %0, %0, #1\n bne 1b" : "+r"(count) : : "cc");
  const uint64_t ticks = instruction_counter_ticks() - start;
  printf("probe loop_instructions=%lu ticks=%llu instructions=%llu\n", (unsigned long)(2u * ITERATIONS),
         (unsigned long long)ticks, (unsigned long long)instruction_counter_instructions(ticks));
#ifdef PROBE_HANG
  /* For the host's time-limit test: a firmware that never finishes. */
  for (;;) {
  }
#endif
  printf("done\n");
  return 0;
}
